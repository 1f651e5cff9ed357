import numpy as np
import pytest
import torch

from agent.preprocess import IMAGENET_MEAN, IMAGENET_STD
from export.data import (
    LayoutError,
    PalmDataset,
    from_synth,
    load_dataset,
    load_split,
    network_input,
    reference_split,
    split_record,
    step_seed,
)
from export.synth import generate_arrays, write_dataset

IDS, SAMPLES = 3, 4


@pytest.fixture(scope="module")
def synth_arrays():
    return generate_arrays(IDS, SAMPLES, "easy", 5)


@pytest.mark.parametrize("layout", ["polyu", "casiam", "tjppv", "iitd", "generic"])
def test_every_layout_loads_what_was_written(tmp_path, layout, synth_arrays):
    samples = 12 if layout == "tjppv" else SAMPLES  # tjppv: samples 11, 12 live in session2
    root = write_dataset(layout, tmp_path / layout, IDS, samples, "easy", 5)
    a = load_dataset(layout, root)
    assert len(a) == IDS * samples and len(a.identities) == IDS
    assert np.array_equal(np.bincount(a.labels), [samples] * IDS)
    bands = {"polyu": 3, "casiam": 3}.get(layout, 1)
    assert a.print.shape == (IDS * samples, 128, 128, bands) and a.print.dtype == np.uint8
    assert (a.vein is None) == (layout == "iitd")
    if a.vein is not None:
        assert a.vein.shape == (IDS * samples, 128, 128, 1)
    if layout == "casiam":  # print = (700, 460, 460)
        assert np.array_equal(a.print[..., 1], a.print[..., 2])
    if layout == "generic":  # lossless PNG: exactly the generator's pixels, in order
        p, v = synth_arrays
        assert np.array_equal(a.print[..., 0], p.reshape(-1, 128, 128))
        assert np.array_equal(a.vein[..., 0], v.reshape(-1, 128, 128))


def test_missing_root_names_the_layout_and_the_fix(tmp_path):
    with pytest.raises(LayoutError) as e:
        load_dataset("casiam", tmp_path / "nowhere")
    msg = str(e.value)
    assert "Casia_M/{casia_700,casia_460,casia_850}" in msg and "palm-export synth" in msg


def test_malformed_root_names_the_missing_image(tmp_path):
    root = write_dataset("polyu", tmp_path / "p", 2, 2, "easy", 0)
    (root / "MS_PolyU" / "NIR_ind" / "0002_0001.jpg").unlink()
    with pytest.raises(LayoutError, match=r"1 capture\(s\) lack .* \(NIR_ind/0002_0001.jpg\)"):
        load_dataset("polyu", root)
    (root / "MS_PolyU" / "Blue_ind").rename(root / "MS_PolyU" / "blue")
    with pytest.raises(LayoutError, match="missing folder"):
        load_dataset("polyu", root)


def test_reference_split_is_a_seeded_half_per_identity(synth_arrays):
    a = from_synth(*generate_arrays(5, 7, "easy", 1))
    train, test = reference_split(a, seed=3)
    assert not set(train) & set(test) and len(train) + len(test) == len(a)
    assert np.array_equal(np.bincount(a.labels[train]), [4] * 5)  # ceil(7/2)
    assert np.array_equal(np.bincount(a.labels[test]), [3] * 5)
    again = reference_split(a, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(train, reference_split(a, seed=4)[0])


@pytest.mark.parametrize(("ids", "samples"), [(6, 3), (1, 8)])
def test_a_split_with_nothing_to_score_is_refused_before_training(ids, samples):
    """3 samples per identity leave 1 test sample each: no genuine pair within a modality,
    found at the first evaluation after the whole training otherwise; 1 identity: no
    impostor pair."""
    with pytest.raises(LayoutError, match="needs an identity with 2 test samples"):
        reference_split(from_synth(*generate_arrays(ids, samples, "easy", 1)))


def test_load_split_rebuilds_the_recorded_images(tmp_path):
    root = write_dataset("casiam", tmp_path / "c", 3, 4, "easy", 2)
    a = load_dataset("casiam", root)
    train, test = reference_split(a, seed=9)
    ckpt = {
        "labels": a.identities,
        "preprocess": {"input_size": 128, "channels": 3},
        "split": {"seed": 9, "train": split_record(a, train), "test": split_record(a, test)},
        "dataset": {"ds": "casiam", "root": str(root), "ids": 3, "samples": 4},
    }
    got = load_split(ckpt, "test")
    assert np.array_equal(got.print, a.print[test]) and np.array_equal(got.labels, a.labels[test])
    synth = {
        "ds": "synth",
        "root": None,
        "synth": {"ids": 3, "samples": 4, "level": "easy", "seed": 2},
    }
    arrays = from_synth(*generate_arrays(3, 4, "easy", 2))
    tr, _ = reference_split(arrays, 9)
    ckpt2 = {
        **ckpt,
        "labels": arrays.identities,
        "dataset": synth,
        "split": {"seed": 9, "train": split_record(arrays, tr), "test": {}},
    }
    assert np.array_equal(load_split(ckpt2, "train").vein, arrays.vein[tr])
    with pytest.raises(ValueError, match="data set holds"):
        load_split({**ckpt, "split": {"test": {"001": [99]}}}, "test")


def test_dataset_items_augmentation_and_print_only(synth_arrays):
    from export.augment import AugmentConfig

    a = from_synth(*synth_arrays)
    plain = PalmDataset(a)
    p, v, label = plain[5]
    assert p.shape == v.shape == (3, 128, 128) and p.dtype == torch.float32 and label == 1
    std, mean = (
        torch.tensor(IMAGENET_STD)[:, None, None],
        torch.tensor(IMAGENET_MEAN)[:, None, None],
    )
    raw = v * std + mean  # a grey vein repeated over 3 channels, then normalised per channel
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    aug = PalmDataset(a, augment_cfg=AugmentConfig(), seed=1)
    first = aug[5][0]
    assert torch.equal(first, aug[5][0]) and torch.equal(first, aug[(0, 5)][0])
    assert not torch.equal(first, p)
    assert not torch.equal(first, aug[(1, 5)][0])
    print_only = from_synth(synth_arrays[0], None)
    assert len(PalmDataset(print_only)[0]) == 2


def test_persistent_workers_draw_each_epochs_own_augmentation(synth_arrays):
    """Workers that outlive an epoch hold their own dataset: the epoch rides with each index."""
    from torch.utils.data import RandomSampler

    from export.augment import AugmentConfig
    from export.data import EpochSampler
    from export.data.loader import ChunkedLoader

    def epochs(workers: int) -> list[list[torch.Tensor]]:
        ds = PalmDataset(from_synth(*synth_arrays), augment_cfg=AugmentConfig(), seed=3)
        sampler = EpochSampler(RandomSampler(ds, generator=torch.Generator()), seed=3)
        loader = ChunkedLoader(ds, 4, sampler, workers)  # the training loop's loader
        out = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            out.append([batch[0] for batch in loader])
            sampler.set_epoch(epoch)  # the same order again, to rebuild the first batch by hand
            keys = list(sampler)[:4]
            assert all(k[0] == epoch for k in keys)
            assert torch.equal(out[-1][0], torch.stack([ds[k][0] for k in keys]))
        return out

    ds = PalmDataset(from_synth(*synth_arrays), augment_cfg=AugmentConfig(), seed=3)
    assert not torch.equal(ds[(0, 5)][0], ds[(1, 5)][0])  # the key's epoch counts
    inline, pooled = epochs(0), epochs(2)
    for a, b in zip(inline, pooled, strict=True):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # a new order and new draws every epoch, and the same ones again for the same epoch
    assert not torch.equal(inline[0][0], inline[1][0])
    assert all(torch.equal(x, y) for x, y in zip(inline[2], epochs(0)[2], strict=True))


def test_chunked_loader_gives_a_plain_loaders_batches(synth_arrays):
    """Each batch is cut into chunks that different workers build at once; put back together
    they are the plain loader's batches, tensor for tensor, the short last one included."""
    from torch.utils.data import DataLoader, RandomSampler

    from export.augment import AugmentConfig
    from export.data import EpochSampler
    from export.data.loader import ChunkedLoader, chunks_per_batch

    assert [chunks_per_batch(b, w) for b, w in ((256, 12), (9, 3), (7, 4), (6, 0), (5, 8))] == [
        8,
        3,
        1,
        1,
        5,
    ]
    ds = PalmDataset(from_synth(*synth_arrays), augment_cfg=AugmentConfig(), seed=3)

    def sampler() -> EpochSampler:
        return EpochSampler(RandomSampler(ds, generator=torch.Generator()), seed=3)

    plain_order, chunked_order = sampler(), sampler()
    plain = DataLoader(ds, 9, sampler=plain_order)
    chunked = ChunkedLoader(ds, 9, chunked_order, workers=3)
    assert chunked.parts == 3 and chunked.loader.batch_size == 3 and len(chunked) == 2
    for epoch in range(2):
        plain_order.set_epoch(epoch)
        chunked_order.set_epoch(epoch)
        want, got = list(plain), list(chunked)
        assert [len(b[0]) for b in got] == [9, 3]  # 12 pairs: a full batch and a short one
        assert len(want) == len(got)
        for a, b in zip(want, got, strict=True):
            assert len(a) == len(b) == 3  # print, vein, label
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_uint8_items_normalised_after_the_loader_are_the_float_items(synth_arrays):
    """What a GPU run trains on (uint8 images through the workers, normalised where the batch
    lands) is bit for bit what the workers would have normalised, augmentation included, for
    grey and colour ROIs alike."""
    from torch.utils.data import RandomSampler

    from agent.preprocess import preprocess
    from export.augment import AugmentConfig
    from export.data import EpochSampler
    from export.data.loader import ChunkedLoader

    batches = {}
    for normalised in (True, False):
        ds = PalmDataset(
            from_synth(*synth_arrays), augment_cfg=AugmentConfig(), seed=3, normalised=normalised
        )
        sampler = EpochSampler(RandomSampler(ds, generator=torch.Generator()), seed=3)
        sampler.set_epoch(1)
        batches[normalised] = list(ChunkedLoader(ds, 6, sampler, workers=2))
    for floats, raw in zip(batches[True], batches[False], strict=True):
        assert raw[0].dtype == torch.uint8 and raw[0].shape[1:] == (128, 128, 3)
        assert torch.equal(network_input(raw[0]), floats[0])
        assert torch.equal(network_input(raw[1]), floats[1])
        assert torch.equal(raw[2], floats[2])
    colour = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    expected = np.stack([preprocess(c) for c in colour])
    assert torch.equal(network_input(torch.from_numpy(colour)), torch.from_numpy(expected))


def test_a_steps_seed_fits_torch_for_any_seed_a_user_gives():
    """A date as --seed (20240101) made the step seed pass torch's 64-bit limit: the run
    stopped at its first step with "Overflow when unpacking long long"."""
    seeds = [step_seed(s, e, k) for s in (0, 20240101, 2**40) for e in (0, 3999) for k in (0, 7)]
    for v in seeds:
        torch.Generator().manual_seed(v)  # raises past its range
    assert len(set(seeds)) == len(seeds)  # every step its own draws
    assert step_seed(20240101, 3, 7) == step_seed(20240101, 3, 7)  # and the same on resume
