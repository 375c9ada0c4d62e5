"""Byte alignment of two tokenizations and the teacher-to-student vocabulary map, on
tokenizers whose merges the test writes itself (hand-worked offsets)."""

import numpy as np
import pytest

from kdistill.data.alignment import ByteAligner
from kdistill.data.errors import DataError
from kdistill.data.tokenizers import ByteTokenizer, HFTokenizer, spelled_bytes

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")


def byte_level_bpe(directory, merges):
    """A byte-level BPE tokenizer with exactly these merges (``Ġ`` is the space)."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(alphabet)}}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, list(merges)))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>"
    ).save_pretrained(directory)
    return HFTokenizer(directory)


WORDS = [("t", "h"), ("th", "e"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t")]


@pytest.fixture
def student(tmp_path):
    return byte_level_bpe(tmp_path / "student", WORDS)


def test_spelled_bytes_are_exact_even_for_part_of_a_character(student):
    spelled = spelled_bytes(student)
    assert spelled[0] == b""  # the end-of-text token spells nothing
    assert spelled[student.encode("the")[0]] == b"the"
    assert spelled[student.encode(" cat")[0]] == b" cat"
    ids = student.encode("é")  # two bytes, two tokens, neither a character alone
    assert [spelled[i] for i in ids] == [b"\xc3", b"\xa9"]
    assert spelled_bytes(ByteTokenizer())[:3] == [b"\x00", b"\x01", b"\x02"]


def test_a_tokenizer_that_does_not_spell_bytes_is_refused(tmp_path):
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0, "a": 1}, "<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>"
    ).save_pretrained(tmp_path)
    with pytest.raises(DataError, match="not a byte-level BPE tokenizer"):
        spelled_bytes(HFTokenizer(tmp_path))


def test_positions_align_where_both_tokenizations_end_at_the_same_byte(student):
    aligner = ByteAligner(student, ByteTokenizer())
    the, cat = student.encode("the")[0], student.encode(" cat")[0]
    # "the cat" <eos> "the": student ends 3, 7, 8 (the eos counts one), 11; the teacher's bytes
    # end 1..7, its eos 8, then 9..11
    view = aligner.view([the, cat, 0, the])
    assert view.ids == [*b"the cat", 256, *b"the"]
    assert list(zip(view.student, view.teacher, strict=True)) == [(0, 2), (1, 6), (2, 7), (3, 10)]
    # the other way round: every student (byte) position inside a teacher token has no match
    back = ByteAligner(ByteTokenizer(), student).view([*b"the cat"])
    assert back.ids == [the, cat]
    assert list(zip(back.student, back.teacher, strict=True)) == [(2, 0), (6, 1)]


def test_a_block_that_starts_or_ends_inside_a_character_aligns_the_rest(student):
    aligner = ByteAligner(student, ByteTokenizer())
    tail_of_e_acute, the = student.encode("é")[1], student.encode("the")[0]
    lead_of_e_acute = student.encode("é")[0]
    view = aligner.view([tail_of_e_acute, the, lead_of_e_acute])
    # the teacher reads "the" only: the half characters at either end are not its text
    assert view.ids == [*b"the"]
    assert list(zip(view.student, view.teacher, strict=True)) == [(1, 2)]


def test_a_teacher_that_does_not_spell_the_text_back_is_refused(student, tmp_path):
    class PrefixSpace(ByteTokenizer):
        identity = "bytes-with-a-prefix-space"

        def encode(self, text):
            return list((" " + text).encode())

    with pytest.raises(DataError, match="does not spell 'the' byte for byte"):
        ByteAligner(student, PrefixSpace()).view(student.encode("the"))


def test_the_vocabulary_map_gives_each_teacher_token_the_longest_student_prefix(tmp_path):
    student = byte_level_bpe(tmp_path / "s", [("Ġ", "c"), ("Ġc", "a")])
    teacher = byte_level_bpe(tmp_path / "t", WORDS)
    mapping = ByteAligner(student, teacher).vocabulary_map()
    s, t = spelled_bytes(student), spelled_bytes(teacher)
    index = {b: i for i, b in enumerate(s) if b}
    assert mapping[teacher.encode(" cat")[0]] == index[b" ca"]  # no " cat" in the student
    assert mapping[teacher.encode("the")[0]] == index[b"t"]
    assert mapping[teacher.encode("x")[0]] == index[b"x"]
    assert mapping[teacher.eos_id] == student.eos_id
    assert len(mapping) == len(t) and mapping.dtype == np.int64 and (mapping >= 0).all()
