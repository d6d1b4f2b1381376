"""The settings fingerprint: every spec field either changes it or cannot change a vector."""

from __future__ import annotations

import pytest

from jobs.fingerprint import NEUTRAL_DESCRIBE, NEUTRAL_FIELDS, VECTOR_FIELDS, settings_fingerprint
from jobs.spec import JobSpec

# A value other than the default for each field that can change a vector.
CHANGED = {
    "model.revision": "v2",
    "model.model_kwargs": {"dtype": "bfloat16"},
    "model.backend": "onnx",
    "model.prompt_name": "query",
    "model.prompt": "query: ",
    "model.task": "document",
    "model.normalize": True,
    "model.truncate_dim": 8,
    "model.precision": "int8",
    "model.compute_precision": "bfloat16",
    "model.int8_ranges": [[0.0], [1.0]],
    "model.max_seq_length": 16,
    "model.trust_remote_code": True,
    "policy.max_text_chars": 20,
    "chunking.enabled": True,
    "chunking.max_tokens": 64,
    "chunking.overlap": 8,
    "chunking.emit": "both",
}


def spec_fields() -> list[str]:
    out = ["previous"]
    for name, section in JobSpec.model_fields.items():
        if name != "previous":
            out += [f"{name}.{f}" for f in section.annotation.model_fields]
    return out


def test_every_spec_field_is_fingerprinted_or_named_neutral():
    for dotted in spec_fields():
        section = dotted.split(".")[0]
        neutral = dotted in NEUTRAL_FIELDS or f"{section}.*" in NEUTRAL_FIELDS
        assert (dotted in VECTOR_FIELDS) != neutral, f"{dotted}: in both groups or in neither"
    assert set(CHANGED) == set(VECTOR_FIELDS)


@pytest.mark.parametrize("dotted", VECTOR_FIELDS)
def test_each_vector_field_changes_the_fingerprint(dotted):
    base = JobSpec.from_dict({"model": "m", "input": {"uri": "in"}, "output": {"uri": "out"}}).to_dict()
    section, name = dotted.split(".")
    if section == "chunking" and name != "enabled":
        base["chunking"]["enabled"] = True  # chunking's other fields count once it is on
    changed = {**base, section: {**base[section], name: CHANGED[dotted]}}
    cut = lambda d: d["policy"]["max_text_chars"] or 65536  # noqa: E731 - the effective cut
    before = settings_fingerprint("w", base, {"modules": []}, cut(base))
    after = settings_fingerprint("w", changed, {"modules": []}, cut(changed))
    assert before != after, dotted


def test_chunking_fields_do_not_count_while_chunking_is_off():
    base = JobSpec.from_dict({"model": "m", "input": {"uri": "in"}, "output": {"uri": "out"}}).to_dict()
    changed = {**base, "chunking": {**base["chunking"], "max_tokens": 64, "emit": "both"}}
    assert settings_fingerprint("w", base, {}, 100) == settings_fingerprint("w", changed, {}, 100)


@pytest.mark.parametrize(
    ("field", "default", "other"),
    [("backend", "torch", "onnx"), ("compute_precision", "float32", "bfloat16")],
)
def test_a_later_fields_default_keeps_fingerprints_made_before_it_existed(field, default, other):
    spec = JobSpec.from_dict({"model": "m", "input": {"uri": "in"}, "output": {"uri": "out"}}).to_dict()
    assert spec["model"][field] == default
    older = {**spec, "model": {k: v for k, v in spec["model"].items() if k != field}}
    before = settings_fingerprint("w", older, {"modules": []}, 100)
    assert settings_fingerprint("w", spec, {"modules": []}, 100) == before
    changed = {**spec, "model": {**spec["model"], field: other}}
    assert settings_fingerprint("w", changed, {"modules": []}, 100) != before


def test_packed_or_padded_forward_does_not_change_the_fingerprint():
    spec = JobSpec.from_dict({"model": "m", "input": {"uri": "in"}, "output": {"uri": "out"}}).to_dict()
    describe = {"modules": [], "dtype": "float32"}
    padded = {**describe, "packed": False, "packed_reason": "architecture 'Qwen3Model' is not one of (...)"}
    before = settings_fingerprint("w", spec, describe, 100)
    assert settings_fingerprint("w", spec, padded, 100) == before
    assert settings_fingerprint("w", spec, {**describe, "packed": True, "packed_reason": None}, 100) == before
    assert settings_fingerprint("w", spec, {**describe, "dtype": "float16"}, 100) != before
    assert {"packed", "packed_reason"} <= set(NEUTRAL_DESCRIBE)


def test_a_resume_with_another_character_cut_is_refused(tmp_path, tiny_st_model, jobio, jobkit, ray_session):
    """Once accepted: 199 of 600 vectors came from text cut to 20 characters."""
    from jobs import run_job
    from jobs.manifest import OutputConflict

    jobkit.write_files(str(tmp_path / "in"), jobio.corpus(20, seed=41), files=1, row_group_size=10)
    out = str(tmp_path / "out")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out), progress=False, keep_warm=True)
    cut = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, policy={"max_text_chars": 20})
    with pytest.raises(OutputConflict, match="embedding settings"):
        run_job(cut, progress=False, keep_warm=True)
