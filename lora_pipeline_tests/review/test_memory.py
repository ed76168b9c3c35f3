"""The review app's memory ceiling, measured on a real server process (`lora-pipeline review` on
127.0.0.1): six parallel uploads of a small PNG that declares 7900x7900 pixels (just under the
pixel limit; about 190 MB each once decoded) keep the process under 1 GB RSS. The decode budget
lets one such decode run at a time; without it the six decodes ran at once (2.66 GB).

A ceiling on memory, never on time: the waits below are deadlines, not assertions."""

from __future__ import annotations

import re
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lora_pipeline.cli import main
from lora_pipeline.media.images import MAX_IMAGE_PIXELS
from lora_pipeline_tests.review.conftest import review_app_process

SIDE = 7900
UPLOADS = 6
CEILING_BYTES = 1024**3
DEADLINE_S = 300.0

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the server's RSS from Linux's /proc"
)


def big_png(path: Path, side: int, colour: tuple[int, int, int]) -> Path:
    """A PNG of side x side pixels of one colour, compressed row by row: about 200 KB on disk,
    and never whole in this process's memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" + bytes(colour) * side  # filter type 0, then the row's RGB bytes
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _status_kb(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found, f"no {field} in /proc/{pid}/status"
    return int(found.group(1))


class RssSampler:
    """The highest RSS seen of a process, sampled every few milliseconds in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return  # the process is gone
            self._stop.wait(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    """`lora-pipeline review` in its own process on a home with project demo / character
    aiko; yields its URL and pid."""
    home = tmp_path / "home"
    for name in ("DATABASE_URL", "DATA_ROOT", "REVIEW_TOKEN", "REVIEW_DECODE_PIXELS"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    cast = (["init"], ["project", "add", "demo"], ["character", "add", "aiko", "--project", "demo"])
    for argv in cast:
        assert main(argv) == 0, argv
    with review_app_process(tmp_path / "review.log") as served:
        yield served


def test_six_parallel_big_uploads_stay_under_1_gb(server: tuple[str, int], tmp_path: Path) -> None:
    url, pid = server
    assert SIDE * SIDE <= MAX_IMAGE_PIXELS  # just under the limit: decoded, not refused
    png = big_png(tmp_path / "big.png", SIDE, (200, 40, 90)).read_bytes()
    assert len(png) < 300_000

    # A browser of the app: its id cookie and the form token its pages carry.
    browser = httpx.Client(base_url=url, headers={"origin": url}, timeout=DEADLINE_S)
    page = browser.get("/ingest")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    baseline_kb = _status_kb(pid, "VmRSS")

    answers: list[httpx.Response] = []
    start = threading.Barrier(UPLOADS)

    def upload(n: int) -> None:
        start.wait()
        answers.append(
            browser.post(
                "/ingest",
                data={"csrf_token": token, "mode": "single", "character": "aiko"},
                files={"file": (f"big-{n}.png", png, "image/png")},
                headers={"accept": "application/json"},
            )
        )

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(UPLOADS)]
    with RssSampler(pid) as sampler:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The kernel's own high-water mark of the process: catches a peak between samples.
        high_water_kb = _status_kb(pid, "VmHWM")
    browser.close()

    # Every upload was decoded and answered: the first stored, the others the same picture.
    assert len(answers) == UPLOADS
    for answer in answers:
        assert answer.status_code in (200, 409), answer.text
        assert "error_id" not in answer.json() and "\n" not in answer.text
    assert any(answer.status_code == 200 for answer in answers)
    peak = max(sampler.peak_kb, high_water_kb) * 1024
    print(
        f"\nreview app RSS: {baseline_kb / 1024:.0f} MB before, peak {peak / 1024**2:.0f} MB "
        f"(sampled {sampler.peak_kb / 1024:.0f} MB, VmHWM {high_water_kb / 1024:.0f} MB) "
        f"over {UPLOADS} parallel uploads of a {len(png) // 1000} KB {SIDE}x{SIDE} PNG"
    )
    assert peak < CEILING_BYTES, f"the review app peaked at {peak / 1024**2:.0f} MB RSS"
