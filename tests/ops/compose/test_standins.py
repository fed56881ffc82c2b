"""ops/compose/standins.py: which images the shape needs, and which Debian can stand in for."""

from __future__ import annotations

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
