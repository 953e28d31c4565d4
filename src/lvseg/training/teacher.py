"""The mean teacher of semi-supervised training: an exponential moving average of the student model."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from lvseg.errors import LvsegError
from lvseg.models import SegmentationModel

UPDATES_KEY = "lvseg_teacher_updates"


class EmaTeacher:
    """A copy of the student model whose weights follow the student's as an EMA, used without gradients.

    :meth:`update` after each optimizer step: W_teacher = decay * W_teacher + (1 - decay) * W_student,
    for every trainable parameter and every floating-point buffer (BatchNorm statistics); integer
    buffers are copied. The first update copies the student (as ``torch.optim.swa_utils.AveragedModel``
    does), so the teacher starts from the weights after the first step, not from the initialisation. Frozen pretrained sub-models (``student.frozen_modules()``, e.g. a Hugging Face
    text encoder) are shared with the student, not copied: they never change. The teacher stays in eval
    mode and predicts through the model contract (:meth:`SegmentationModel.predict_proba`).
    """

    def __init__(self, student: SegmentationModel, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise LvsegError(f"--teacher-decay {decay} is not in [0, 1)")
        self.decay = float(decay)
        self.student = student
        shared = {id(module): module for module in student.frozen_modules()}
        self.model: SegmentationModel = copy.deepcopy(student, memo=shared)
        self.model.eval()
        self.model.requires_grad_(False)
        self._pairs = [
            (t, s) for t, s in zip(self.model.parameters(), student.parameters()) if s.requires_grad and t is not s
        ]
        self._buffers = [(t, s) for t, s in zip(self.model.buffers(), student.buffers()) if t is not s]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 if self.updates == 0 else 1.0 - self.decay
        for teacher_parameter, student_parameter in self._pairs:
            teacher_parameter.lerp_(student_parameter, weight)
        for teacher_buffer, student_buffer in self._buffers:
            if teacher_buffer.is_floating_point():
                teacher_buffer.lerp_(student_buffer, weight)
            else:
                teacher_buffer.copy_(student_buffer)
        self.updates += 1

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """images (K, C, S, S), K reports -> the teacher's probabilities (K, 1, S, S), float32."""
        self.model.eval()
        return self.model.predict_proba(images, texts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
        return state | {UPDATES_KEY: torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop(UPDATES_KEY, torch.tensor(1)))
        self.model.load_state_dict(state, strict=True)
