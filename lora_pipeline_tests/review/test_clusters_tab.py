"""The Clusters tab (issue 17 item 4): candidate characters with their size and contact sheet,
labelled as a new or an existing character (their crops become pending images) or dismissed;
every form CSRF-checked, and bad ids, decided clusters and bad forms answered in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from markupsafe import escape
from PIL import Image
from sqlalchemy import select

from lora_pipeline.registry import commands
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.models import CandidateCluster, Character, UnrecognisedCrop
from lora_pipeline.registry.models import Image as ImageRow
from lora_pipeline_tests.review.conftest import Studio

JSON = {"accept": "application/json"}


def make_cluster(studio: Studio, project: str = "show", crops: int = 3, first: int = 0) -> int:
    """A project-mode frame and `crops` drawn crops of it in one open cluster; its id."""
    frame_image = studio.root.put_image(Image.new("RGB", (64, 48), (10, first % 256, 30)))
    with studio.registry.session() as session:
        source = commands.create_source(
            session, project, "image_upload", frame_image.relpath, mode="project"
        )
        frame, _ = commands.add_frame(
            session, source.id, frame_image.sha256, frame_image.relpath, 0, 0.0, 64, 48
        )
        crop_ids = []
        for n in range(first, first + crops):
            stored = studio.root.put_image(Image.new("RGB", (16, 24), (200, n % 256, 40)))
            provenance = {"source_id": source.id, "frame_index": 0, "crop": {"box": [0, 0, 16, 24]}}
            crop, _ = cluster_commands.add_unrecognised_crop(
                session, frame.id, stored.sha256, stored.relpath, 16, 24, provenance
            )
            crop_ids.append(crop.id)
        cluster = cluster_commands.save_cluster(
            session, source.project_id, "test-embedder", crop_ids, [1.0, 0.0]
        )
        return cluster.id


def crop_ids_of(studio: Studio, cluster_id: int) -> list[int]:
    with studio.registry.session() as session:
        return [c.id for c in cluster_commands.cluster_crops(session, cluster_id)]


def status_of(studio: Studio, cluster_id: int) -> str:
    with studio.registry.session() as session:
        return cluster_commands.get_cluster(session, cluster_id).status


def images_of(studio: Studio, slug: str) -> list[ImageRow]:
    with studio.registry.session() as session:
        character = commands.get_character(session, slug)
        query = select(ImageRow).where(ImageRow.character_id == character.id)
        return list(session.scalars(query.order_by(ImageRow.id)))


def post(studio: Studio, path: str, **data: str):
    return studio.client.post(path, data={"csrf_token": studio.csrf(), **data}, headers=JSON)


def test_the_page_lists_each_cluster_with_its_size_contact_sheet_and_forms(studio: Studio):
    big, small = make_cluster(studio, crops=4), make_cluster(studio, crops=2, first=50)
    other = make_cluster(studio, project="other", crops=3, first=100)
    page = studio.client.get("/clusters")
    assert page.status_code == 200
    text = page.text
    assert 'href="/clusters" class="active"' in text
    # Largest first, per project; each crop's thumbnail is on the sheet.
    assert text.index(f'id="cluster-{big}"') < text.index(f'id="cluster-{small}"')
    assert "4 crop(s)" in text and "2 crop(s)" in text
    for crop_id in crop_ids_of(studio, big):
        assert f'src="/crops/{crop_id}/thumb"' in text
    # Every form carries the browser's token; "existing" offers the project's cast only.
    assert text.count(f'value="{studio.csrf()}"') >= 9
    show_section = text[text.index(f'id="cluster-{big}"') : text.index(f'id="cluster-{small}"')]
    assert 'value="aiko"' in show_section and 'value="mio"' not in show_section
    # One project's clusters only.
    only_other = studio.client.get("/clusters?project=other").text
    assert f'id="cluster-{other}"' in only_other and f'id="cluster-{big}"' not in only_other


def test_the_page_without_clusters_says_so(studio: Studio):
    page = studio.client.get("/clusters?project=other")
    assert page.status_code == 200 and "No candidate characters in other" in page.text


def test_crop_thumbnails_and_files_are_served_and_unknown_ones_are_404(studio: Studio):
    cluster_id = make_cluster(studio, crops=1)
    (crop_id,) = crop_ids_of(studio, cluster_id)
    thumb = studio.client.get(f"/crops/{crop_id}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    full = studio.client.get(f"/crops/{crop_id}")
    assert full.status_code == 200 and full.content.startswith(b"\x89PNG")
    for path in (f"/crops/{crop_id + 1}/thumb", f"/crops/{crop_id + 1}", "/crops/0/thumb"):
        missing = studio.client.get(path, headers=JSON)
        assert missing.status_code == 404 and "no crop" in missing.json()["error"], path


def test_a_crop_path_outside_the_data_root_is_never_served(studio: Studio, tmp_path: Path):
    cluster_id = make_cluster(studio, crops=1)
    (crop_id,) = crop_ids_of(studio, cluster_id)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    with studio.registry.session() as session:
        # A row edited by hand to point out of the data root (the commands refuse to write it).
        session.get(UnrecognisedCrop, crop_id).path = "../../secret.png"
    for path in (f"/crops/{crop_id}", f"/crops/{crop_id}/thumb"):
        assert studio.client.get(path).status_code == 404, path


def test_labelling_as_a_new_character_makes_its_crops_pending_images(studio: Studio):
    cluster_id = make_cluster(studio, crops=3)
    answer = post(
        studio, f"/clusters/{cluster_id}/label",
        slug="midori", name="Midori", design_prompt="green coat",
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "ok": True, "cluster_id": cluster_id, "status": "labelled", "character": "midori",
        "images": 3,
    }  # fmt: skip
    images = images_of(studio, "midori")
    assert len(images) == 3 and {i.status for i in images} == {"pending"}
    assert {i.provenance["cluster_id"] for i in images} == {cluster_id}
    with studio.registry.session() as session:
        midori = commands.get_character(session, "midori")
        assert midori.design_prompt == "green coat" and midori.project.slug == "show"
    assert status_of(studio, cluster_id) == "labelled"
    # The Approve tab shows them; the cluster is no longer open.
    assert "midori" in studio.client.get("/approve?character=midori").text
    assert f'id="cluster-{cluster_id}"' not in studio.client.get("/clusters").text
    listed = studio.client.get("/clusters?status=all").text
    assert f'id="cluster-{cluster_id}"' in listed and "labelled as midori" in listed


def test_labelling_as_an_existing_character_by_a_plain_form_redirects_with_a_notice(
    studio: Studio,
):
    cluster_id = make_cluster(studio, crops=2)
    answer = studio.client.post(
        f"/clusters/{cluster_id}/label",
        data={"csrf_token": studio.csrf(), "character": "kenji", "project": "show"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/clusters?project=show&") and "outcome=labelled" in location
    page = studio.client.get(location)
    assert f"Cluster {cluster_id} labelled kenji: 2 pending image(s) to review" in page.text
    assert [i.status for i in images_of(studio, "kenji")] == ["pending", "pending"]


def test_dismissing_sets_the_cluster_aside(studio: Studio):
    cluster_id = make_cluster(studio, crops=2)
    answer = post(studio, f"/clusters/{cluster_id}/dismiss")
    assert answer.json() == {
        "ok": True, "cluster_id": cluster_id, "status": "dismissed", "size": 2,
    }  # fmt: skip
    assert status_of(studio, cluster_id) == "dismissed"
    plain = studio.client.post(
        f"/clusters/{make_cluster(studio, first=60)}/dismiss",
        data={"csrf_token": studio.csrf()},
    )
    assert plain.status_code == 200 and "dismissed: its crops are set aside" in plain.text


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"character": "aiko"}, {"character": "kenji"}),
        ({"character": "aiko"}, {"slug": "hana", "name": "Hana"}),
        ({}, {"character": "aiko"}),
        ({}, {}),
    ],
)
def test_a_decided_cluster_is_409_and_changes_nothing(studio: Studio, first, second):
    cluster_id = make_cluster(studio, crops=2)
    done = f"/clusters/{cluster_id}/" + ("label" if first else "dismiss")
    assert post(studio, done, **first).status_code == 200
    again = f"/clusters/{cluster_id}/" + ("label" if second else "dismiss")
    answer = post(studio, again, **second)
    assert answer.status_code == 409
    expected = f"cluster {cluster_id} is already {'labelled' if first else 'dismissed'}"
    assert answer.json()["error"] == expected
    with studio.registry.session() as session:
        # No character was added for the refused label, no image for the second character.
        assert session.scalar(select(Character).where(Character.slug == "hana")) is None
        assert session.scalars(select(ImageRow)).all().__len__() == (2 if first else 0)
    # A plain form gets the page with the same one line.
    # A plain form gets the Clusters page back (its filter kept) with the same one line.
    page = studio.client.post(
        again, data={"csrf_token": studio.csrf(), "project": "show", **second}
    )
    assert page.status_code == 409 and "Traceback" not in page.text
    assert f'<p class="error" role="alert">{expected}</p>' in page.text
    assert "<h1>Candidate characters</h1>" in page.text
    assert '<option value="show" selected>' in page.text


@pytest.mark.parametrize("action", ["label", "dismiss"])
def test_an_unknown_cluster_is_404(studio: Studio, action: str):
    cluster_id = make_cluster(studio)
    data = {"character": "aiko"} if action == "label" else {}
    answer = post(studio, f"/clusters/{cluster_id + 7}/{action}", **data)
    assert answer.status_code == 404
    assert answer.json()["error"] == f"unknown cluster {cluster_id + 7}"
    out_of_range = post(studio, f"/clusters/0/{action}", **data)
    assert out_of_range.status_code == 404 and "ids are whole numbers" in out_of_range.text
    assert status_of(studio, cluster_id) == "open"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "say who this is"),
        ({"character": "aiko", "slug": "hana", "name": "Hana"}, "not both"),
        ({"character": "mio"}, "'mio' is not in the project of cluster"),
        ({"character": "nobody"}, "nobody"),
        ({"slug": "Bad Slug", "name": "Bad"}, "invalid character slug"),
        ({"slug": "hana"}, "character name"),
        ({"slug": "aiko", "name": "Aiko again"}, "already exists"),
    ],
)
def test_a_bad_label_form_is_one_line_and_changes_nothing(studio: Studio, data, error):
    cluster_id = make_cluster(studio, crops=2)
    answer = post(studio, f"/clusters/{cluster_id}/label", **data)
    assert answer.status_code in (400, 404, 409)
    message = answer.json()["error"]
    assert error in message and "\n" not in message
    plain = studio.client.post(
        f"/clusters/{cluster_id}/label", data={"csrf_token": studio.csrf(), **data}
    )
    assert plain.status_code == answer.status_code and "<h1>Candidate characters</h1>" in plain.text
    assert escape(message) in plain.text
    assert status_of(studio, cluster_id) == "open"
    with studio.registry.session() as session:
        assert session.scalar(select(Character).where(Character.slug == "hana")) is None
        assert session.scalars(select(ImageRow)).first() is None


@pytest.mark.parametrize("action", ["label", "dismiss"])
def test_the_cluster_forms_refuse_a_missing_csrf_token(studio: Studio, action: str):
    cluster_id = make_cluster(studio)
    for data in ({}, {"csrf_token": studio.csrf() + "x"}):
        answer = studio.client.post(
            f"/clusters/{cluster_id}/{action}", data={**data, "character": "aiko"}
        )
        assert answer.status_code == 403 and "CSRF check failed" in answer.text
    assert status_of(studio, cluster_id) == "open"
    with studio.registry.session() as session:
        assert session.get(CandidateCluster, cluster_id).character_id is None
