import numpy as np
import pytest
import torch
import torchvision

from qaclims.irn.networks import EdgeDisplacementNet
from qaclims.irn.random_walk import (
    infer_edge,
    plan_random_walk,
    pseudo_mask,
    random_walk,
    random_walk_dense_reference,
    transition_operator,
)


def _inputs(h: int, w: int, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    cam = rng.random((k, h, w)).astype(np.float32)
    edge = (rng.random((h, w)) ** 3).astype(np.float32)
    return cam, edge


@pytest.mark.parametrize("size", [(12, 10), (7, 13), (20, 17)])
def test_sparse_walk_is_the_dense_matrix_power(size):
    cam, edge = _inputs(*size)
    # float64 everywhere: the two formulations are the same arithmetic up to rounding
    ref64 = random_walk_dense_reference(cam, edge, dtype=torch.float64)
    sparse64 = random_walk(cam, edge, method="sparse", dtype=torch.float64)
    dense64 = random_walk(cam, edge, method="dense", dtype=torch.float64)
    scale = np.abs(ref64).max()
    assert np.abs(sparse64 - ref64).max() <= 1e-10 * scale
    assert np.abs(dense64 - ref64).max() <= 1e-10 * scale
    # the float32 outputs against the authors' float32 formulation
    ref32 = random_walk_dense_reference(cam, edge)
    sparse32 = random_walk(cam, edge, method="sparse")
    assert sparse32.dtype == np.float32 and sparse32.shape == cam.shape
    assert np.abs(sparse32 - ref32).max() <= 1e-4 * np.abs(ref32).max()
    np.testing.assert_array_equal(sparse32.argmax(0), ref32.argmax(0))
    # ... and against the exact value (the authors' float32 is the less accurate of the two)
    assert np.abs(sparse32 - ref64).max() <= 1e-6 * scale


def test_exp_times_is_the_number_of_squarings():
    cam, edge = _inputs(9, 11, k=2)
    for t in (0, 1, 3):
        np.testing.assert_allclose(
            random_walk(cam, edge, exp_times=t, method="sparse", dtype=torch.float64),
            random_walk_dense_reference(cam, edge, exp_times=t, dtype=torch.float64),
            rtol=1e-10, atol=1e-12)
    # exp_times=0 is one step of T: a normalised neighbourhood average of cam * (1 - edge)
    x = (cam.astype(np.float64) * (1 - edge.astype(np.float64))).reshape(2, -1)
    m = transition_operator(torch.from_numpy(edge).double()).to_dense().numpy()
    np.testing.assert_allclose(random_walk(cam, edge, exp_times=0, dtype=torch.float64),
                               (m @ x.T).T.reshape(cam.shape), rtol=1e-12)


def test_transition_operator_is_row_stochastic_with_local_support():
    _, edge = _inputs(10, 9)
    m = transition_operator(torch.from_numpy(edge), radius=5).to_dense().numpy()
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    ys, xs = np.divmod(np.arange(90), 9)
    far = (ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2 >= 25
    assert (m[far] == 0).all()
    # deg * M = A is symmetric
    a = m / np.diag(m)[:, None]  # A[j, j] = 1, so row j divided by M[j, j] is A[j, :]
    np.testing.assert_allclose(a, a.T, rtol=1e-9, atol=1e-15)


def test_a_closed_boundary_stops_the_walk():
    h, w = 16, 20
    edge = np.zeros((h, w), np.float32)
    edge[:, 9:11] = 1.0  # a wall two pixels thick
    cam = np.zeros((1, h, w), np.float32)
    cam[0, :, :4] = 1.0
    rw = random_walk(cam, edge)[0]
    assert rw[:, :9].min() > 0.05
    assert rw[:, 11:].max() == 0.0  # nothing crosses: every path through the wall has aff 0
    # without the wall the class spreads to the right half too
    assert random_walk(cam, np.zeros_like(edge))[0][:, 11:].min() > 0.01


def test_plan_choice_and_memory_budget():
    # VOC and COCO sized maps: the sparse walk, far below a 16 GB GPU
    voc = plan_random_walk(125, 94, 3)
    assert voc.method == "sparse" and voc.class_chunk == 3
    coco = plan_random_walk(160, 120, 20, memory_budget_mb=16 * 1024)
    assert coco.method == "sparse" and coco.est_bytes < 256 * 2**20
    # forcing the dense formulation: ~2 * 4 * n^2 bytes must fit
    with pytest.raises(MemoryError, match="125x94"):
        plan_random_walk(125, 94, 3, method="dense", memory_budget_mb=512)
    assert plan_random_walk(125, 94, 3, method="dense", memory_budget_mb=4096).method == "dense"
    # a map of a few pixels: the dense power is cheaper and chosen, unless the budget forbids
    tiny = plan_random_walk(4, 5, 8, memory_budget_mb=64)
    assert tiny.method == "dense"
    # a tight budget splits the classes into chunks; too tight is an error
    full = plan_random_walk(60, 50, 10, memory_budget_mb=1024)
    fixed = plan_random_walk(60, 50, 10, memory_budget_mb=1024).est_bytes - 24 * 3000 * 10
    tight_mb = (fixed + 24 * 3000 * 3 + 10) / 2**20
    tight = plan_random_walk(60, 50, 10, memory_budget_mb=tight_mb, method="sparse")
    assert full.class_chunk == 10 and tight.class_chunk == 3
    assert tight.est_bytes <= tight_mb * 2**20
    with pytest.raises(MemoryError, match="budget"):
        plan_random_walk(60, 50, 10, memory_budget_mb=0.01)
    with pytest.raises(ValueError, match="method"):
        plan_random_walk(6, 6, 1, method="fast")


def test_chunked_walk_equals_unchunked():
    cam, edge = _inputs(30, 25, k=5)
    whole = random_walk(cam, edge, method="sparse", dtype=torch.float64)
    plan = plan_random_walk(30, 25, 5, memory_budget_mb=1024)
    one_mb = (plan.est_bytes - 24 * 750 * 4) / 2**20  # room for one class at a time
    assert plan_random_walk(30, 25, 5, memory_budget_mb=one_mb).class_chunk == 1
    chunked = random_walk(cam, edge, memory_budget_mb=one_mb, dtype=torch.float64)
    np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=0)
    with pytest.raises(MemoryError):
        random_walk(cam, edge, memory_budget_mb=0.01)


def test_bad_inputs_name_the_image():
    cam, edge = _inputs(8, 9)
    bad = cam.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="img_7.*NaN"):
        random_walk(bad, edge, image_id="img_7")
    with pytest.raises(ValueError, match="img_7.*edge size"):
        random_walk(cam, edge[:, :8], image_id="img_7")
    with pytest.raises(ValueError, match="img_7.*probabilities"):
        random_walk(cam, edge + 1.0, image_id="img_7")
    assert random_walk(np.zeros((0, 8, 9), np.float32), edge).shape == (0, 8, 9)


# -- pseudo masks ----------------------------------------------------------------------------
def test_pseudo_mask_global_max_threshold_and_keys():
    rw = np.zeros((2, 3, 4), np.float32)
    rw[0, :, :2] = 10.0  # class 4: strong
    rw[1, :, 2:] = 1.5  # class 9: 0.15 of the global max -> background at 0.20
    mask = pseudo_mask(rw, [4, 9], (10, 14))
    assert mask.shape == (10, 14) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 4}
    assert (mask[:, :6] == 4).all() and (mask[:, 10:] == 0).all()
    # per-class normalisation would have kept class 9; the global one (the authors') does not,
    # but a lower background threshold does
    assert (pseudo_mask(rw, [4, 9], (10, 14), bg_threshold=0.1)[:, 10:] == 9).all()


def test_pseudo_mask_upsamples_bilinearly_and_crops():
    rw = np.zeros((1, 2, 2), np.float32)
    rw[0, 0, 0] = 1.0
    mask = pseudo_mask(rw, [1], (5, 6), bg_threshold=0.5)
    up = torch.nn.functional.interpolate(torch.from_numpy(rw)[None], scale_factor=4,
                                         mode="bilinear", align_corners=False)[0, 0, :5, :6]
    np.testing.assert_array_equal(mask, np.where(up.numpy() > 0.5, 1, 0))
    assert mask[0, 0] == 1 and mask[4, 5] == 0


def test_pseudo_mask_edge_cases_and_errors():
    assert (pseudo_mask(np.zeros((0, 3, 4)), [], (9, 13)) == 0).all()
    assert (pseudo_mask(np.zeros((2, 3, 4)), [1, 2], (9, 13)) == 0).all()  # no NaN from 0/0
    with pytest.raises(ValueError, match="im1.*does not fit"):
        pseudo_mask(np.ones((1, 3, 4)), [1], (13, 13), image_id="im1")
    with pytest.raises(ValueError, match="im1.*2 keys"):
        pseudo_mask(np.ones((1, 3, 4)), [1, 2], (9, 13), image_id="im1")
    with pytest.raises(ValueError, match="im1.*NaN"):
        pseudo_mask(np.full((1, 3, 4), np.nan), [1], (9, 13), image_id="im1")


def test_walk_then_mask_end_to_end_shapes():
    hh, ww = 37, 50
    h, w = (hh - 1) // 4 + 1, (ww - 1) // 4 + 1
    cam, edge = _inputs(h, w, k=2, seed=3)
    mask = pseudo_mask(random_walk(cam, edge), [5, 11], (hh, ww))
    assert mask.shape == (hh, ww) and set(np.unique(mask)) <= {0, 5, 11}


# -- edge inference ------------------------------------------------------------------------
def test_infer_edge_shape_range_and_flip_equivariance():
    torch.manual_seed(0)
    net = EdgeDisplacementNet(torchvision.models.resnet18(weights=None)).eval()
    img = torch.randn(3, 30, 42)
    edge = infer_edge(net, img)
    assert edge.shape == (8, 11) and edge.dtype == torch.float32
    assert (edge >= 0).all() and (edge <= 1).all()
    # edge(flip(x)) == flip(edge(x)): the flip average is symmetric by construction
    np.testing.assert_allclose(infer_edge(net, img.flip(-1)).numpy(),
                               edge.flip(-1).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="image"):
        infer_edge(net, img[None])
