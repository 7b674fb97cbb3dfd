"""Drive a real interactive bash through a pseudo-terminal, as a person
at a terminal would: bash -i on a pty uses readline for every line.

    with BashSession(user="alice") as sh:   # runuser -u alice -- bash -i
        sh.run("echo hello")                # waits for the next prompt
    sh.pid                                  # the bash process

Each line is typed and ended with Enter (CR, what a terminal sends);
``run`` returns once bash prints its prompt again, so the line was read
and executed. Control characters can be typed literally with readline's
quoted-insert: ``BashSession.literal("\\n")`` gives C-v C-j.
"""
import os
import pty
import select
import signal
import time

PROMPT = "@dkebpf-ready@ "
BASH = "/bin/bash"


class BashSession:
    def __init__(self, user=None, bash=BASH, timeout=20):
        self.timeout = timeout
        argv = [bash, "--norc", "--noprofile", "-i"]
        if user is not None:
            argv = ["runuser", "-u", user, "--"] + argv
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "dumb", "PS1": PROMPT,
               "HOME": "/", "LANG": "C.UTF-8", "HISTFILE": "/dev/null"}
        pid, fd = pty.fork()
        if pid == 0:  # child: the pty is its controlling terminal and stdio
            try:
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.fd = fd
        self.child = pid
        self.output = b""
        self.prompts = 0
        self._wait_prompt(1)
        # runuser forks bash as its child: the bash pid is the pty's foreground process
        self.pid = self._bash_pid()

    def _bash_pid(self):
        if os.path.basename(os.readlink(f"/proc/{self.child}/exe")) == "bash":
            return self.child
        with open(f"/proc/{self.child}/task/{self.child}/children") as f:
            kids = [int(x) for x in f.read().split()]
        bashes = [k for k in kids if os.path.basename(os.readlink(f"/proc/{k}/exe")) == "bash"]
        assert len(bashes) == 1, (self.child, kids)
        return bashes[0]

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the other side is gone
            return None
        if not data:
            return None
        self.output += data
        return True

    def _wait_prompt(self, n):
        end = time.monotonic() + self.timeout
        while self.output.count(PROMPT.encode()) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"bash prompt #{n} not seen; output tail: {self.output[-300:]!r}")
            if self._read(0.1) is None:
                raise EOFError(f"bash ended; output tail: {self.output[-300:]!r}")
        self.prompts = n

    @staticmethod
    def literal(ch):
        """Keys typing ch into the line itself (readline quoted-insert, C-v)."""
        return "\x16" + ch

    def run(self, line):
        """Type line, press Enter, wait for the next prompt."""
        data = line.encode() + b"\r"
        # write in pieces: a pty's input queue holds about 4 KiB at a time
        for i in range(0, len(data), 1024):
            os.write(self.fd, data[i:i + 1024])
            while self._read(0):
                pass
        self._wait_prompt(self.prompts + 1)

    def close(self):
        """exit bash (itself a line readline reads) and reap it."""
        if self.fd is None:
            return
        try:
            os.write(self.fd, b"exit\r")
            end = time.monotonic() + self.timeout
            while time.monotonic() < end and self._read(0.1) is not None:
                pass
        finally:
            os.close(self.fd)
            self.fd = None
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.child, 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
