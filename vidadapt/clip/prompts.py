"""Prompt templates for zero-shot classification: ``template.format(class_name)``.

Zero-shot CLIP embeds every template filled with a class name and averages the normalised
embeddings into one class embedding (prompt ensembling). The sets below are the ones the CLIP
authors published for Kinetics-700 and UCF101, and ActionCLIP's 16; ``"photo"`` is CLIP's
default single prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError

_VERBS = ("", "using ", "doing ", "during ", "performing ", "practicing ")
_MEDIA = ("photo", "video", "example", "demonstration")

TEMPLATES: dict[str, list[str]] = {
    "photo": ["a photo of a {}."],
    "video": ["a video of {}."],
    # CLIP's Kinetics-700 set: "a {photo, video, example, demonstration} of {}." and
    # "... of a person [using/doing/during/performing/practicing] {}.", 28 templates.
    "kinetics": [
        f"a {media} of {subject}{{}}."
        for media in _MEDIA
        for subject in ("", *(f"a person {verb}" for verb in _VERBS))
    ],
    # CLIP's UCF101 set: 6 verbs x "a" / "the" person x 4 media, 48 templates.
    "ucf101": [
        f"a {media} of {article} person {verb}{{}}."
        for verb in _VERBS
        for article in ("a", "the")
        for media in _MEDIA
    ],
    # ActionCLIP's 16 training / test templates (Wang et al.).
    "actionclip": [
        "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
        "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
        "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
        "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
        "The man is {}", "The woman is {}",
    ],
}


def resolve_templates(templates: str | Sequence[str]) -> list[str]:
    """A named set of ``TEMPLATES`` or a list of templates, each with one ``{}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ConfigError(
                f"unknown prompt template set {templates!r}; choose one of "
                f"{', '.join(TEMPLATES)} or give a list of templates with one '{{}}' each"
            )
        return list(TEMPLATES[templates])
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ConfigError(f"prompt templates need exactly one '{{}}' each; got {bad or templates}")
    return list(templates)
