"""The app's own settings (model pack, threshold profile, threads, last folders), kept as JSON in its data folder."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cxr_edge.runtime.atomic import write_atomic

__all__ = ["AppSettings", "MAX_THREADS"]

log = logging.getLogger(__name__)

MAX_THREADS = 8


@dataclass
class AppSettings:
    pack: str = ""          # empty: the pack bundled with the app, or cxr-edge's usual lookup
    profile: str = ""       # empty: each model's default threshold profile
    threads: int = 2
    last_dir: str = ""      # where the file picker opens
    export_dir: str = ""    # where the export picker opens
    path: Path | None = None

    @classmethod
    def load(cls, path) -> "AppSettings":
        path = Path(path)
        known = {f.name for f in fields(cls)} - {"path"}
        data = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
                data = {k: v for k, v in raw.items() if k in known} if isinstance(raw, dict) else {}
            except (OSError, ValueError) as exc:
                log.warning("settings file %s is unreadable (%s); using defaults", path, exc)
        settings = cls(**data, path=path)
        settings.threads = min(MAX_THREADS, max(1, int(settings.threads or 1)))
        return settings

    def save(self) -> None:
        if self.path is None:
            return
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data, indent=2))
