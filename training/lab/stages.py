"""The one resumable stage runner of the multi-step commands (ablation, default-model).

A stage is a name, the file that proves it finished, and the work that writes that file.
Resuming reuses every stage whose file exists; a stage whose work ends without writing its
file is an error naming both.
"""
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Type, Union

__all__ = ["StageRunner"]

PathLike = Union[str, "os.PathLike[str]"]


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class StageRunner:
    """Runs named stages once; ``records`` lists them in order ({"stage", "seconds"} or
    {"stage", "reused": True}, plus the caller's ``extra``), ``seconds`` maps name -> time."""

    def __init__(self, resume: bool, error: Type[Exception] = RuntimeError,
                 say: Optional[Callable[[str], None]] = None) -> None:
        self.resume = resume
        self.error = error
        self.say = say or _to_stderr
        self.records: List[Dict[str, Any]] = []
        self.seconds: Dict[str, float] = {}

    def run(self, name: str, done: PathLike, work: Callable[[], Any], describe: str = "",
            **extra: Any) -> PathLike:
        """Run ``work`` unless resuming and ``done`` exists; returns ``done``. ``describe``
        is printed when the stage starts; ``extra`` goes into its record (a "log" key is
        named in the error of a stage that writes nothing)."""
        if self.resume and os.path.exists(done):
            self.say("[%s] reusing %s" % (name, done))
            self.records.append(dict({"stage": name, "reused": True}, **extra))
            return done
        self.say("[%s] %s" % (name, describe or "started"))
        started = time.time()
        work()
        seconds = round(time.time() - started, 1)
        if not os.path.exists(done):
            raise self.error("stage %s finished without writing %s%s"
                             % (name, done, " (log %s)" % extra["log"] if "log" in extra
                                else ""))
        self.seconds[name] = seconds
        self.records.append(dict({"stage": name, "seconds": seconds}, **extra))
        self.say("[%s] done in %.0f s" % (name, seconds))
        return done
