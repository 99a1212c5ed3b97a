"""stackdistill students. Importing this package registers them with ``AutoConfig``/``AutoModel``."""

from transformers import AutoConfig, AutoModel

from .base import StudentConfig, StudentModel
from .mimic import MimicConfig, MimicStudent, default_target_layers, mimic_from_teacher

AutoConfig.register(MimicConfig.model_type, MimicConfig, exist_ok=True)
AutoModel.register(MimicConfig, MimicStudent, exist_ok=True)

__all__ = ["StudentConfig", "StudentModel", "MimicConfig", "MimicStudent", "default_target_layers",
           "mimic_from_teacher"]
