"""Property tests over the ingest entry points (hypothesis): random bytes, names and numbers
given to `store_upload`, `actions.request_ingest`, `create_source` and `lora-pipeline ingest`
never raise anything but a one-line PipelineError, never leave a file outside the data root,
and leave the registry consistent (a request is recorded whole, with its stored file, or not at
all, and a refused one leaves no stored file behind)."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import select

from lora_pipeline import actions
from lora_pipeline.errors import PipelineError
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import UploadError, store_upload
from lora_pipeline.media.video import sniff_container
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.registry.models import Source
from lora_pipeline_tests.media.conftest import demo_registry

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


# Starts that send the bytes down each path: image, each video container, each playlist form.
HEADS = [
    b"",
    _png(),
    b"\x89PNG\r\n\x1a\n",
    b"\x00\x00\x00\x18ftypisom",
    b"\x00\x00\x00\x14ftypqt  ",
    b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm",
    b"RIFF\x00\x00\x00\x00AVI LIST",
    b"FLV\x01\x05",
    b"OggS\x00\x02",
    b"\x00\x00\x01\xba",
    b"#EXTM3U\n#EXTINF:1,\n/etc/passwd\n",
    b"ffconcat version 1.0\nfile '/etc/passwd'\n",
    b"<?xml version='1.0'?><MPD>",
    b"GIF89a",
]
contents = st.builds(
    lambda head, tail: head + tail, st.sampled_from(HEADS), st.binary(max_size=600)
)
names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=60,
).filter(lambda name: name not in (".", ".."))
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[tuple[Registry, DataRoot]]:
    registry = demo_registry(tmp_path)
    yield registry, DataRoot(tmp_path / "data")
    registry.dispose()


def _files(root: DataRoot) -> set[Path]:
    return {p for p in root.root.rglob("*") if p.is_file() or p.is_symlink()}


def _outside(root: DataRoot, before: set[Path], scratch: Path) -> list[Path]:
    """Files that appeared anywhere under the test's folder but outside the data root."""
    base = root.root.parent
    found = {p for p in base.rglob("*") if p.is_file() and not p.is_relative_to(root.root)}
    return sorted(p for p in found - before if not p.is_relative_to(scratch))


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    try:
        path.write_bytes(data)
    except OSError:  # a name the file system refuses (too long in bytes): use a plain one
        path = folder / "upload.bin"
        path.write_bytes(data)
    return path


@EXAMPLES
@given(data=contents, name=names)
def test_store_upload_of_anything(studio, data: bytes, name: str) -> None:
    _, root = studio
    others = {p for p in root.root.parent.rglob("*") if p.is_file()}
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), name, data)
        before = _files(root)
        try:
            stored = store_upload(path, root)
        except UploadError as error:
            assert "\n" not in str(error) and str(error)
            assert _files(root) == before  # a refused upload stores nothing
        else:
            target = root.path(stored.relpath)
            assert target.is_file() and target.read_bytes() != b""
            if stored.kind == "video_upload":
                container = sniff_container(target.read_bytes()[:4096])
                assert container is not None and stored.relpath.endswith(container.suffix)
            else:
                assert stored.relpath.endswith(".png")
        assert _outside(root, others, Path(folder)) == []


@EXAMPLES
@given(data=contents, name=names, fps=numbers, max_frames=numbers)
def test_request_ingest_of_anything(
    studio, data: bytes, name: str, fps: float, max_frames: float
) -> None:
    registry, root = studio
    target = actions.IngestTarget("demo", "aiko", "single")
    with registry.session(readonly=True) as session:
        sources_before = session.scalars(select(Source.id)).all()
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), name, data)
        before = _files(root)
        try:
            created = actions.request_ingest(
                registry, root, target, file=path, fps=fps, max_frames=max_frames
            )
        except PipelineError as error:
            assert "\n" not in str(error)
            with registry.session(readonly=True) as session:
                assert session.scalars(select(Source.id)).all() == sources_before
            new = _files(root) - before
            # Only a new, empty uploads/incoming sweep area may remain; never a stored upload.
            assert not [p for p in new if "uploads" in p.parts or "images" in p.parts]
            return
    with registry.session(readonly=True) as session:
        source = session.get(Source, created.source_id)
        assert source.state == "pending" and root.path(source.uri).is_file()


@EXAMPLES
@given(url=st.text(max_size=120), scheme=st.sampled_from(["http", "HTTP", "HtTpS", "file", ""]))
def test_url_requests_never_keep_credentials(studio, url: str, scheme: str) -> None:
    registry, _ = studio
    text = f"{scheme}://user:pa55word@{url}" if scheme else url
    try:
        with registry.session() as session:
            source = commands.create_source(session, "demo", "url", text, "aiko")
            stored = source.uri
    except InvalidInputError as error:
        assert "\n" not in str(error) and "pa55word" not in str(error)
        return
    assert scheme.lower() in ("http", "https")
    assert "pa55word" not in stored


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with project demo and character aiko, for the CLI."""
    from lora_pipeline.cli import main

    home = tmp_path_factory.mktemp("cli") / "home"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DATABASE_URL", "DATA_ROOT", "IDENTIFIER", "COMFYUI_OUTPUT_DIR"):
            patch.delenv(f"LORA_PIPELINE_{name}", raising=False)
        patch.setenv("LORA_PIPELINE_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        patch.chdir(home.parent)
        assert main(["init"]) == 0
        assert main(["project", "add", "demo"]) == 0
        assert main(["character", "add", "aiko", "--project", "demo"]) == 0
        yield home


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    source=st.one_of(names, st.sampled_from(["HTTP://x.invalid/v", "retry", "-x", "file:///etc"])),
    fps=st.one_of(st.text(max_size=12), numbers.map(str)),
)
def test_the_ingest_command_of_anything(cli_home: Path, capsys, source: str, fps: str) -> None:
    from lora_pipeline.cli import main

    capsys.readouterr()  # what earlier examples printed
    try:
        code = main(["ingest", source, "--character", "aiko", f"--fps={fps}"])
    except SystemExit as exit_:  # argparse refusing the arguments: usage and exit 2
        assert exit_.code == 2
        return
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 0 or (code == 2 and err.count("\n") == 1 and err.startswith("error: "))
    data_root = cli_home / "data"
    assert all(p.resolve().is_relative_to(data_root.resolve()) for p in data_root.rglob("*"))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=contents, name=names)
def test_ingest_now_of_anything_leaves_no_source_running(
    cli_home: Path, capsys, data: bytes, name: str
) -> None:
    """`ingest FILE --now` runs the ingest in the CLI's process: whatever the file, its source
    ends done or failed (never running), in one line, and nothing lands outside the data root."""
    from lora_pipeline.cli import main

    capsys.readouterr()
    registry = Registry(f"sqlite:///{cli_home / 'registry.db'}")
    with registry.session(readonly=True) as session:
        before = set(session.scalars(select(Source.id)))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), name, data)
        code = main(["ingest", str(path), "--character", "aiko", "--now"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 0 or (code == 2 and err.count("\n") == 1 and err.startswith("error: "))
    with registry.session(readonly=True) as session:
        states = dict(session.execute(select(Source.id, Source.state)).tuples().all())
    registry.dispose()
    assert "running" not in states.values()
    new = {states[i] for i in set(states) - before}
    event(f"exit {code}, new sources {sorted(new)}")  # --hypothesis-show-statistics
    assert new <= {"done", "failed"} and (code == 0) == (new == {"done"})
    data_root = cli_home / "data"
    assert all(p.resolve().is_relative_to(data_root.resolve()) for p in data_root.rglob("*"))
