"""tests/gateway/fake_worker.py, except that a stream pauses DONE_PAUSE seconds (default 3) between its
"data: [DONE]" event and the end of its chunked body: a client that stops reading at [DONE] has its
complete answer while the gateway still waits for the worker's last bytes.  For test_gw_kill.py.
usage: slow_done_worker.py PORT"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gateway"))
import fake_worker  # noqa: E402

PAUSE = float(os.environ.get("DONE_PAUSE", "3"))


class Handler(fake_worker.Handler):
    def chunk(self, data):
        super().chunk(data)
        if data == b"data: [DONE]\n\n":
            time.sleep(PAUSE)


if __name__ == "__main__":
    fake_worker.Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
