"""The unit of work a worker process gets: one module at one dtype, as typed data that crosses a pipe as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from onnxdtype.build.search import SearchBudget
from onnxdtype.verify.repair import RepairBudget
from onnxdtype.verify.rounding import ROUNDING_DRAWS
from onnxdtype.verify.weight_noise import WEIGHT_DRAWS


@dataclass
class VerifySpec:
    """How a module's variants are verified: evaluation data saved in the build's temp folder, tolerances, repair."""
    eval_dir: str
    source: str
    synthesized: bool
    min_cosine: dict[str, float]  # by dtype name: what generic outputs need
    agreement: dict[str, float]  # by dtype name: the share of task units that must agree with fp32
    tasks: dict[str, dict]  # output -> TaskSpec fields (the judge deciding it, its parameters and why)
    states: dict[str, str]  # recurrent output -> the input it feeds (sequences run step by step)
    atol: float
    metric: str | None
    repair: bool
    budget: RepairBudget = field(default_factory=RepairBudget)
    rounding_draws: int = ROUNDING_DRAWS  # fp32's own noise floor (verify.rounding); 0: none
    weight_draws: int = WEIGHT_DRAWS  # and its weights' (verify.weight_noise); 0: none


@dataclass
class VariantTask:
    module: str
    dtype: str
    norm_path: str  # the normalized model the recipe steps start from
    normalized: list[str]  # the normalize passes that changed it
    options: dict[str, dict]  # recipe name -> its Options as a dict, already resolved for this dtype
    tmp: str  # where the variant is written
    base_bytes: int
    verify: VerifySpec | None = None
    specialized: dict | None = None  # what --fix-input did to the base before normalizing (plan.ModulePlan)
    search: list[dict] = field(default_factory=list)  # option overrides to try, fastest first (build.search)
    search_ranges: dict[str, str] = field(default_factory=dict)  # method -> ranges file to retry failing ones on
    search_budget: SearchBudget = field(default_factory=SearchBudget)
    single_file: bool = False  # the base is one .onnx file: so is the variant, below the protobuf limit

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> VariantTask:
        data = json.loads(line)
        spec = data.pop("verify")
        if spec is not None:
            spec = VerifySpec(**{**spec, "budget": RepairBudget(**spec["budget"])})
        return cls(**{**data, "search_budget": SearchBudget(**data["search_budget"])}, verify=spec)
