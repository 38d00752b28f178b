"""Points per check (kmodlab/rubric.yml, or --rubric FILE): each check is named by its rubric key, the key its
marker declares (@pytest.mark.kmodlab_check(key=...) in kmodlab/checks), or PART.build for the grader's own
check that a part builds and loads."""

from __future__ import annotations

from pathlib import Path

import yaml

from kmodlab import LabError

DEFAULT_RUBRIC = Path(__file__).resolve().parents[1] / "rubric.yml"


class Rubric:
    """`points` gives checks their points by key; any other check is worth `default`."""

    def __init__(self, data: dict, source: str = "the rubric"):
        self.source = source
        self.default = float(data.get("default", 1))
        self.points = {str(key): float(value) for key, value in (data.get("points") or {}).items()}

    def worth(self, key: str) -> float:
        return self.points.get(key, self.default)

    def check_keys(self, keys: set[str]) -> None:
        """Refuse a rubric that names a key no check has (a typo, or a check that was renamed): a LabError."""
        unknown = sorted(set(self.points) - keys)
        if unknown:
            raise LabError(
                f"{self.source} gives points to {', '.join(unknown)}, which no check has; the checks' keys are: "
                + ", ".join(sorted(keys))
            )


def load_rubric(path: Path | None) -> Rubric:
    path = path or DEFAULT_RUBRIC
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise LabError(f"cannot read the rubric {path}: {err}") from err
    if not isinstance(data, dict) or not set(data) <= {"default", "points"}:
        raise LabError(f"{path}: a rubric has `default` (points) and `points` (check key: points) only")
    return Rubric(data, str(path))
