"""Two tokenizations of one text lined up by their bytes: what cross-tokenizer distillation
reads (a student with its own vocabulary taught by a teacher with another).

A student block (packed: documents separated by the end-of-text token) is spelled back into
its bytes; each document's piece is tokenized by the teacher's tokenizer (the piece's first and
last bytes that are only part of a character are left out of the teacher's text); the teacher's
end-of-text token stands between pieces, as the student's does. Offsets count bytes, and one
unit for each end-of-text token. A student position and a teacher position are **aligned**
where their tokens end at the same offset: both models then predict the text that starts there,
so their next-token distributions can be compared (the teacher's mapped onto the student's
vocabulary, or both sorted, :mod:`kdistill.losses.cross_vocab`). Positions where one
tokenization ends inside the other's token have no counterpart and take no divergence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdistill.data.errors import DataError
from kdistill.data.tokenizers import Tokenizer, spelled_bytes


@dataclass(frozen=True)
class TeacherView:
    """The teacher's tokens of a student block's text, and the aligned positions:
    ``student[i]`` and ``teacher[i]`` end at the same offset."""

    ids: list[int]
    student: list[int]
    teacher: list[int]


def _partial_head(data: bytes) -> int:
    """Leading bytes that continue a character begun before the piece (at most 3)."""
    n = 0
    while n < min(3, len(data)) and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def _partial_tail(data: bytes) -> int:
    """Trailing bytes of a character the piece does not finish (0 when it ends whole)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
        return back if need > back else 0
    return 0


class ByteAligner:
    """Lines a student's blocks up with its teacher's tokenization of the same text.

    Args:
        student, teacher: the two tokenizers; both must spell text byte for byte
            (:func:`~kdistill.data.tokenizers.spelled_bytes`).
    """

    def __init__(self, student: Tokenizer, teacher: Tokenizer) -> None:
        self.student_bytes = spelled_bytes(student)
        self.teacher_bytes = spelled_bytes(teacher)
        self.teacher = teacher
        self.student_eos, self.teacher_eos = student.eos_id, teacher.eos_id

    def view(self, row: Sequence[int]) -> TeacherView:
        """The teacher's view of one student block (its token ids)."""
        spelled, eos = self.student_bytes, self.student_eos
        ends: list[int] = []  # per student position: its end offset, -1 for no bytes
        pieces: list[tuple[int, bytes]] = []  # (start offset, bytes) of each document's piece
        offset, start, piece = 0, 0, bytearray()
        for token in row:
            token = int(token)
            if token == eos:
                pieces.append((start, bytes(piece)))
                offset += 1
                start, piece = offset, bytearray()
                ends.append(offset)
                continue
            b = spelled[token]
            piece += b
            offset += len(b)
            ends.append(offset if b else -1)
        pieces.append((start, bytes(piece)))
        ids: list[int] = []
        teacher_ends: list[int] = []
        for k, (start, data) in enumerate(pieces):
            head, tail = _partial_head(data), _partial_tail(data)
            kept = data[head : len(data) - tail]
            self._tokenize(kept, start + head, ids, teacher_ends)
            if k < len(pieces) - 1:
                ids.append(self.teacher_eos)
                teacher_ends.append(start + len(data) + 1)
        at = {end: j for j, end in enumerate(teacher_ends)}
        pairs = [(i, at[end]) for i, end in enumerate(ends) if end >= 0 and end in at]
        return TeacherView(ids, [i for i, _ in pairs], [j for _, j in pairs])

    def _tokenize(self, data: bytes, start: int, ids: list[int], ends: list[int]) -> None:
        if not data:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"a student block's text is not UTF-8 ({e}): cross-tokenizer distillation "
                "needs text both tokenizers read"
            ) from None
        tokens = self.teacher.encode(text)
        spelled = [self.teacher_bytes[t] for t in tokens]
        if b"".join(spelled) != data:
            raise DataError(
                f"the teacher's tokenizer {self.teacher.identity} does not spell {text[:40]!r} "
                "byte for byte (it adds or drops characters, e.g. a prefix space): its tokens "
                "cannot be lined up with the student's"
            )
        offset = start
        for token, b in zip(tokens, spelled, strict=True):
            offset += len(b)
            ids.append(token)
            ends.append(offset)

    def vocabulary_map(self) -> np.ndarray:
        """``(teacher vocabulary,)``: for each teacher token, the student token that spells the
        longest beginning of its bytes (its end-of-text token: the student's; a special token
        spelling nothing: -1, its probability is left out). The teacher's probability of a
        token becomes the student's probability of starting the same text that way."""
        first: dict[bytes, int] = {}
        for i, b in enumerate(self.student_bytes):
            if b:
                first.setdefault(b, i)
        longest = max(map(len, first), default=0)
        out = np.full(len(self.teacher_bytes), -1, dtype=np.int64)
        for t, b in enumerate(self.teacher_bytes):
            if t == self.teacher_eos:
                out[t] = self.student_eos
                continue
            for n in range(min(len(b), longest), 0, -1):
                s = first.get(b[:n])
                if s is not None:
                    out[t] = s
                    break
        return out
