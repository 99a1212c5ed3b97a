"""stackdistill students. Importing this package registers every kind with the student registry
and with ``AutoConfig`` / ``AutoModel``: one line per kind below."""

from .base import BuildContext, StudentConfig, StudentModel
from .distilhubert import DistilHubertStudent
from .lowrank import LowRankStudent
from .mimic import MimicConfig, MimicStudent, default_target_layers, mimic_from_teacher
from .pruned import PrunedStudent
from .registry import KINDS, StudentSpec, build_student, register_student, student_class, student_name
from .shared import SharedStudent
from .structured import StructuredStudent

register_student(MimicStudent)
register_student(DistilHubertStudent)
register_student(SharedStudent)
register_student(PrunedStudent)
register_student(StructuredStudent)
register_student(LowRankStudent)

__all__ = ["BuildContext", "StudentConfig", "StudentModel", "MimicConfig", "MimicStudent", "DistilHubertStudent",
           "SharedStudent", "PrunedStudent", "StructuredStudent", "LowRankStudent", "KINDS", "StudentSpec", "build_student", "register_student",
           "student_class", "student_name", "default_target_layers", "mimic_from_teacher"]
