"""Judging one completion: build the test program for its benchmark, run it in the sandbox, and
compute SantaCoder's exact-match rules (CrossCodeEval: its EM and ES, nothing run). Every judgement
names its rule."""
from __future__ import annotations

import secrets
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from . import cceval_score
from .cceval import CCEVAL
from .data import SANTACODER, Task, santacoder_first_body_line
from .sandbox import Limits, SlotPool, python_executable

# The JVM and V8 reserve far more virtual memory than they use, so RLIMIT_AS would kill them at start;
# their heaps are capped by flags instead. The JVM also starts slowly, hence its longer timeout.
JAVA_FLAGS = ["-ea", "-Xmx256m", "-Xss4m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]
NODE_FLAGS = ["--max-old-space-size=256"]
JAVATUPLES_IMPORT = "import org.javatuples.*;"


@dataclass
class Judgement:
    passed: bool | None  # execution pass; None when not executed (tool missing)
    status: str  # passed, failed, timeout, exited early, error, skipped
    em_first_line: bool | None = None  # SantaCoder only
    em_strip: bool | None = None
    em: bool | None = None  # CrossCodeEval only: its exact match and edit similarity (0-1)
    es: float | None = None
    compared: str | None = None  # CrossCodeEval: the prediction after its statement cut, as compared
    seconds: float = 0.0
    detail: str = ""  # tail of stderr for failures; why for skips

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_line(text: str) -> str:
    """Qwen2.5-Coder hm_fim / Open-dLLM rule: the first line, or the second when the completion starts
    with "\\n" or " \\n"."""
    lines = text.split("\n")
    if (text.startswith("\n") or text.startswith(" \n")) and len(lines) > 1:
        return lines[1]
    return lines[0]


def em_first_line(completion: str, reference: str) -> bool:
    return first_line(completion).strip() == reference.strip()


def em_strip(completion: str, reference: str) -> bool:
    """bigcode-evaluation-harness rule: the whole output, stripped."""
    return completion.strip() == reference.strip()


def humaneval_program(task: Task, completion: str) -> str:
    r = task.raw
    return r["prompt"] + completion + r["suffix"] + "\n" + r["test"] + "\n" + f"check({r['entry_point']})"


def santacoder_source(task: Task, completion: str) -> str:
    """The original file with the completion as the hole: prompt + "\\n" + middle + "\\n" + suffix, no
    added newline when the hole is the first body line (the prompt already ends in one)."""
    r = task.raw
    sep = "" if santacoder_first_body_line(r) else "\n"
    return r["prompt"] + sep + completion + "\n" + r["suffix"]


def santacoder_program(task: Task, completion: str) -> tuple[str, str]:
    """(file name, program text) for running the row's ``tests``."""
    source = santacoder_source(task, completion)
    tests = task.raw["tests"]
    if task.language == "py":
        # the py tests end by calling test_check() themselves
        return "prog.py", source + "\n\n" + tests + "\n"
    if task.language == "js":
        return "prog.js", source + "\n\n" + tests + "\n"
    # Java: the source ends with the method's and the class's closing braces; the tests start by closing
    # the method ("    }") and then add main() and the class's closing brace. So drop the class's brace
    # and the tests' first line, and main() lands inside the class.
    body = source.rstrip()
    if not body.endswith("}"):
        body += "\n}"  # a completion that ate the braces still gets a well-formed attempt
    head = tests.split("\n", 1)[1] if tests.lstrip().startswith("}") else tests
    program = body[:-1] + "\n" + head
    # no javatuples jar here, and no row uses its types: drop the import so javac accepts the file
    program = program.replace(JAVATUPLES_IMPORT, "")
    return "Problem.java", program


def with_end_marker(name: str, program: str, nonce: str) -> str:
    """The program, made to write ``nonce`` on fd 3 (the sandbox's channel) once the tests have run to
    the end: an exit before that (status 0 or not) is never a pass."""
    if name.endswith(".py"):
        return program + f"\n__import__('os').write(3, b'{nonce}')\n"
    if name.endswith(".js"):
        return program + f"\nrequire('fs').writeSync(3, '{nonce}');\n"
    # Java: the write goes at the end of the tests' own main() (the file's last method: its closing brace
    # is the one before the class's). A completion that closes class Problem early, defines an empty
    # Problem.main and so moves the tests into another class moves this write with them: never run.
    end = program.rstrip()
    if not end.endswith("}"):
        raise ValueError("the Java program does not end with a closing brace")
    at = end.rfind("}", 0, len(end) - 1)
    if at < 0:
        raise ValueError("no method closes before the end of the Java program")
    write = (f"try (var fimEvalOut = new java.io.FileOutputStream(\"/proc/self/fd/3\")) "
             f"{{ fimEvalOut.write(\"{nonce}\".getBytes()); }} "
             "catch (java.io.IOException fimEvalErr) { throw new RuntimeException(fimEvalErr); }\n")
    return program[:at] + write + program[at:]


def tool_missing(language: str) -> str | None:
    need = {"py": None, "js": "node", "java": "java"}[language]
    if need and not shutil.which(need):
        return f"{need} not found on PATH: {language} execution skipped"
    return None


def default_limits(language: str, timeout: float | None = None) -> Limits:
    if language == "java":
        return Limits(timeout=timeout or 20.0, memory_mb=None, processes=128)
    if language == "js":
        return Limits(timeout=timeout or 5.0, memory_mb=None)
    return Limits(timeout=timeout or 3.0)


def execute(task: Task, completion: str, pool: SlotPool, timeout: float | None = None) -> Judgement:
    if task.benchmark == SANTACODER:
        missing = tool_missing(task.language)
        if missing:
            return Judgement(None, "skipped", detail=missing)
        name, program = santacoder_program(task, completion)
    else:
        name, program = "prog.py", humaneval_program(task, completion)
    if task.language == "py":
        argv = [python_executable(), "-I", name]
    elif task.language == "js":
        argv = ["node", *NODE_FLAGS, name]
    else:
        # the single-file source launcher compiles with javac's compiler in memory: one JVM per task
        argv = ["java", *JAVA_FLAGS, name]
    nonce = secrets.token_hex(16)
    res = pool.run(argv, {name: with_end_marker(name, program, nonce)}, default_limits(task.language, timeout),
                   expect=nonce.encode())
    detail = "" if res.passed else (res.stderr[-800:] or res.stdout[-800:])
    if res.status == "exited early":
        detail = f"exit status 0 before the tests ran to the end\n{detail}".rstrip()
    return Judgement(res.passed, res.status, seconds=res.seconds, detail=detail)


def judge(task: Task, completion: str, pool: SlotPool, execute_tests: bool = True,
          timeout: float | None = None) -> Judgement:
    if task.benchmark == CCEVAL:
        s = cceval_score.score(task.raw["prompt"], completion, task.middle, task.language)
        return Judgement(None, "skipped", em=s.em, es=s.es / 100, compared=s.compared,
                         detail="CrossCodeEval has no tests: exact match and edit similarity only")
    j = execute(task, completion, pool, timeout) if execute_tests else Judgement(None, "skipped",
                                                                                 detail="execution off")
    if task.benchmark == SANTACODER:
        j.em_first_line = em_first_line(completion, task.middle)
        j.em_strip = em_strip(completion, task.middle)
    return j
