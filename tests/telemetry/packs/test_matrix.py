"""tensors() of whole splits fills one matrix from many row groups in parallel (matrix.py): the rows
land where the files' order puts them, standardised and null-filled exactly as the rows say."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from support.packs import expected_steps, make_episodes, write_pack

from telemetry.packs.reader import NO_ACTION, open_pack
from telemetry.packs.tables import DEFAULT_ACTIONS


def _order(pack) -> np.ndarray:
    identity = pack.steps(columns=["episode_id", "step"])
    keys = list(zip(identity.column("episode_id").to_pylist(), identity.column("step").to_pylist(), strict=True))
    return np.array(sorted(range(len(keys)), key=keys.__getitem__))


def test_many_row_groups_and_files_fill_the_matrix_as_the_rows_say(tmp_path, row_groups):
    row_groups(16, file_rows=48)  # many row groups, files rolling over, two lanes per split
    episodes = make_episodes(0, 14, steps=7)
    write_pack(tmp_path / "p", episodes, splits={"train": 0.5, "test": 0.5})
    pack = open_pack(tmp_path / "p")
    files = pack.manifest.files_of("steps")
    assert len(files) >= 4 and sum(f.rows for f in files) > 16 * len(files)  # several row groups per file
    expected = expected_steps(episodes)
    order = _order(pack)
    for normalize in (False, True):
        x, actions, mask, names = pack.tensors(normalize=normalize)
        centre, scale = pack.normalization(names, normalize)
        matrix = x.numpy()[order]
        for j, name in enumerate(names):  # the float32 reference, from the Python values
            column = expected.column(name)
            ref = np.array([np.nan if v is None else v for v in column.to_pylist()], dtype=np.float64)
            ref = ref.astype(np.float32)
            if centre is not None:
                ref = (ref - centre[j]) / scale[j]
            ref[np.asarray(column.is_null())] = 0.0
            np.testing.assert_array_equal(matrix[:, j], ref, err_msg=name)
        labels = [DEFAULT_ACTIONS.index(a) if a else NO_ACTION for a in expected.column("action").to_pylist()]
        assert actions.numpy()[order].tolist() == labels
        everything = [True] * len(DEFAULT_ACTIONS)
        masks = [m if m is not None else everything for m in expected.column("action_mask").to_pylist()]
        assert mask.numpy()[order].tolist() == masks
        # the episode-filtered path (another implementation) agrees row for row
        ids = sorted({e["episode_id"] for e, _ in episodes})
        subset = pack.tensors(episodes=ids, normalize=normalize)
        np.testing.assert_array_equal(subset.features.numpy(), x.numpy())
        assert subset.actions.tolist() == actions.tolist() and subset.action_mask.tolist() == mask.tolist()
    one = pack.tensors(split="test")
    assert one.features.shape[0] == pack.manifest.split_stats["test"].steps
    assert pa.types.is_float32(pa.from_numpy_dtype(one.features.numpy().dtype))


def test_a_loaded_matrix_keeps_its_memory_while_later_loads_reuse_the_pool(tmp_path):
    """The matrix lives in memory from Arrow's pool, which recycles freed memory: a tensor still in
    use must own its memory (not see a later load's rows), and must be an ordinary writable tensor."""
    import gc
    import warnings

    write_pack(tmp_path / "a", make_episodes(0, 6, steps=5))
    write_pack(tmp_path / "b", make_episodes(100, 6, steps=5, seed=1))
    kept = open_pack(tmp_path / "a").tensors()
    reference = kept.features.clone()
    for _ in range(3):  # loads whose memory is freed at once, then one that stays
        open_pack(tmp_path / "b").tensors()
        gc.collect()
        pa.default_memory_pool().release_unused()
    later = open_pack(tmp_path / "b").tensors()
    later.features.fill_(7.0)
    later.actions.fill_(3)
    assert kept.features.data_ptr() != later.features.data_ptr()
    np.testing.assert_array_equal(kept.features.numpy(), reference.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        kept.features.add_(1.0)
    np.testing.assert_array_equal(kept.features.numpy(), reference.numpy() + 1.0)
