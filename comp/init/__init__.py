"""``comp init``: read a competition folder, guess its shape with evidence, and write a first config sized to a
time budget by a timing probe on the machine."""

from comp.init._columns import Guess
from comp.init._init import InitResult, ModelPlan, init_config
from comp.init._recipe import Machine, Probe, parse_budget

__all__ = ["Guess", "InitResult", "Machine", "ModelPlan", "Probe", "init_config", "parse_budget"]
