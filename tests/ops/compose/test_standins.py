"""ops/compose/standins.py: which images the shape needs, and which Debian can stand in for."""

from __future__ import annotations

import pytest

from ops.compose import standins


def test_every_base_image_but_grafana_has_a_stand_in() -> None:
    images = standins.base_images()
    assert images[0] == "python:3.11-slim"  # the Dockerfile's FROM comes first
    assert {"postgres:16", "redis:7"} <= set(images)
    without = [image for image in images if standins.recipe_for(image) is None]
    # Grafana has no Debian package: the monitoring profile runs only with the real image.
    assert [image.split(":")[0] for image in without] == ["grafana/grafana"]
    for image in images:
        recipe = standins.recipe_for(image)
        if recipe:
            assert (standins.RECIPES_DIR / recipe.directory / "Dockerfile").is_file()


def test_only_the_named_services_images_are_prepared() -> None:
    images = standins.base_images(["postgres", "web"])
    assert images == ["python:3.11-slim", "postgres:16"]  # web is built from the Dockerfile


def test_a_python_stand_in_only_for_bookworms_python() -> None:
    assert standins.recipe_for("python:3.11-slim").pip
    assert standins.recipe_for("python:3.12-slim") is None


class Docker:
    """What `docker image inspect` and `docker pull` answer, and what was asked of them."""

    def __init__(self, labels: dict[str, str] | None, pullable: bool) -> None:
        self.labels, self.pullable, self.calls = labels, pullable, []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(standins, "image_labels", self.image_labels)
        monkeypatch.setattr(standins, "pull", self.pull)
        monkeypatch.setattr(standins, "base_image_id", self.build)

    def image_labels(self, image: str) -> dict[str, str] | None:
        self.calls.append(("inspect", image))
        return self.labels

    def pull(self, image: str) -> bool:
        self.calls.append(("pull", image))
        return self.pullable

    def build(self) -> str:
        raise AssertionError("nothing may be built where the real image is there or pullable")


def test_a_real_image_present_is_used_without_a_pull(monkeypatch) -> None:
    docker = Docker(labels={"maintainer": "upstream"}, pullable=False)
    docker.install(monkeypatch)
    assert standins.ensure("postgres:16") == "postgres:16: present (the real image)"
    assert docker.calls == [("inspect", "postgres:16")]


def test_a_pullable_image_is_pulled_and_nothing_built(monkeypatch) -> None:
    for labels in (None, {standins.LABEL: "redis:7"}):  # absent, or an old stand-in
        docker = Docker(labels=labels, pullable=True)
        docker.install(monkeypatch)
        assert standins.ensure("redis:7") == "redis:7: pulled (the real image)"


def test_an_image_without_a_stand_in_that_cannot_be_pulled_is_an_error(monkeypatch) -> None:
    Docker(labels=None, pullable=False).install(monkeypatch)
    with pytest.raises(RuntimeError, match="no stand-in"):
        standins.ensure("grafana/grafana:11.1.0")
