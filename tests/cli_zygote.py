"""Runs `compresskit` commands for the tests, each in a process of its own, without paying the imports.

Starting `compresskit` costs seconds of imports (torch, transformers) before a command does
anything, too slow for a battery of bad inputs. This process imports the console script's module
once, then forks a fresh child per command: the child runs the console script's entry point
(`compresskit.cli:main`, what `compresskit ...` runs) with real file descriptors, so its exit
status is a real process's, and a traceback it prints is really on its stderr. Requests and
replies are JSON lines on stdin/stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(request: dict) -> None:
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        sys.argv = ["compresskit", *request["args"]]
        from compresskit.cli import main

        main()  # click exits through SystemExit, as in the console script
        code = 0
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:  # what the interpreter does with `sys.exit("message")`
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    # what the commands import, paid once (imports only: no thread pool exists before a fork)
    import compresskit.benchmark  # noqa: F401
    import compresskit.cli  # noqa: F401
    import compresskit.export  # noqa: F401
    import compresskit.pipeline  # noqa: F401
    import compresskit.preflight  # noqa: F401
    import compresskit.report.markdown  # noqa: F401
    from compresskit.registry import strategies

    strategies()

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
