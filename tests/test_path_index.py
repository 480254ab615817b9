import numpy as np
import pytest
import torch

from qaclims.irn.path_index import PathIndex, search_paths


def test_radius_2_directions_and_paths_by_hand():
    paths = search_paths(2)
    # grouped by path length (2 before 4), search order inside a group: (0,1) before (1,0)
    assert [p[0].tolist() for p in paths] == [[0, 1], [1, 0], [1, -1], [1, 1]]
    assert paths[0].tolist() == [[0, 1], [0, 0]]
    assert paths[1].tolist() == [[1, 0], [0, 0]]
    # ties in L1 norm keep the scan order (rows, then columns): (0,-1) before (1,0)
    assert paths[2].tolist() == [[1, -1], [0, -1], [1, 0], [0, 0]]
    assert paths[3].tolist() == [[1, 1], [0, 1], [1, 0], [0, 0]]


@pytest.mark.parametrize(("radius", "count"), [(5, 34), (10, 152)])
def test_directions_and_their_negations_cover_the_disc_once(radius, count):
    dirs = {tuple(d) for d in PathIndex(radius, (3 * radius, 3 * radius)).directions}
    assert len(dirs) == count
    neg = {(-dy, -dx) for dy, dx in dirs}
    assert not dirs & neg
    disc = {(y, x) for y in range(-radius, radius + 1) for x in range(-radius, radius + 1)
            if 0 < y * y + x * x < radius * radius}
    assert dirs | neg == disc
    for dy, dx in dirs:  # "down" half-plane (rows grow downwards) plus "right"
        assert dy > 0 or (dy == 0 and dx > 0)


def test_paths_run_from_destination_to_source_near_the_segment():
    for path in search_paths(10):
        dy, dx = path[0]
        assert path[-1].tolist() == [0, 0]
        assert len({tuple(c) for c in path}) == len(path)
        for y, x in path:
            assert min(0, dy) <= y <= max(0, dy) and min(0, dx) <= x <= max(0, dx)
            assert (dy * x - dx * y) ** 2 < dy * dy + dx * dx


def test_source_and_destination_indices():
    pi = PathIndex(radius=5, size=(20, 17))
    m = 4
    assert pi.margin == m and pi.src_shape == (16, 9)
    assert pi.dst_indices.shape == (34, 16 * 9)
    sy, sx = np.divmod(pi.src_indices, 17)
    assert sy.min() == 0 and sy.max() == 15 and sx.min() == m and sx.max() == 17 - m - 1
    dy, dx = np.divmod(pi.dst_indices, 17)
    np.testing.assert_array_equal(dy - sy[None], np.broadcast_to(pi.directions[:, :1], dy.shape))
    np.testing.assert_array_equal(dx - sx[None], np.broadcast_to(pi.directions[:, 1:], dx.shape))
    # default training configuration: radius 10 on 128x128
    assert PathIndex().dst_indices.shape == (152, 119 * 110)


def test_too_small_map_and_bad_radius_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        PathIndex(radius=5, size=(4, 20))
    with pytest.raises(ValueError, match="too small"):
        PathIndex(radius=5, size=(20, 8))
    with pytest.raises(ValueError, match="radius"):
        PathIndex(radius=1, size=(8, 8))


def test_affinity_labels_match_brute_force():
    rng = np.random.default_rng(0)
    label = rng.choice([0, 0, 1, 2, 255], size=(9, 11)).astype(np.uint8)
    pi = PathIndex(radius=3, size=(9, 11))
    bg, fg, neg = pi.affinity_labels(label)
    assert bg.dtype == bool and bg.shape == pi.dst_indices.shape
    flat = label.reshape(-1).astype(int)
    for d in range(pi.n_directions):
        for s in range(pi.n_src):
            a, b = flat[pi.src_indices[s]], flat[pi.dst_indices[d, s]]
            valid = a != 255 and b != 255
            assert bg[d, s] == (valid and a == b == 0)
            assert fg[d, s] == (valid and a == b and a > 0)
            assert neg[d, s] == (valid and a != b)
    assert not (bg & fg).any() and not (bg & neg).any() and not (fg & neg).any()


def test_affinity_labels_of_a_transposed_map_count_the_same_pairs():
    # every unordered pair of labelled pixels is enumerated exactly once (the labelled block
    # keeps clear of the border the source grid leaves out), so the counts are those of all
    # pairs within the radius, which a transposition does not change
    label = np.full((16, 16), 255, np.uint8)
    label[5:11, 5:11] = 0
    label[6:9, 6:10] = 3
    pi = PathIndex(radius=4, size=(16, 16))
    counts = [int(x.sum()) for x in pi.affinity_labels(label)]
    counts_t = [int(x.sum()) for x in pi.affinity_labels(label.T.copy())]
    assert counts == counts_t
    assert all(c > 0 for c in counts)


def test_affinity_label_size_mismatch():
    with pytest.raises(ValueError, match="PathIndex built for"):
        PathIndex(radius=2, size=(5, 6)).affinity_labels(np.zeros((5, 7), np.uint8))


def test_edge_to_affinity_by_hand_radius_2():
    edge = torch.tensor([[0.1, 0.2, 0.3, 0.4],
                         [0.5, 0.6, 0.7, 0.8],
                         [0.9, 0.0, 0.05, 0.15]])
    pi = PathIndex(radius=2, size=(3, 4))
    # sources: rows 0..1, columns 1..2 -> (0,1), (0,2), (1,1), (1,2)
    aff = pi.edge_to_affinity(edge[None])[0]
    e = edge.numpy()
    expected = []
    for dy, dx in [(0, 1), (1, 0), (1, -1), (1, 1)]:
        row = []
        for sy, sx in [(0, 1), (0, 2), (1, 1), (1, 2)]:
            ty, tx = sy + dy, sx + dx
            cells = [(y, x) for y in range(min(sy, ty), max(sy, ty) + 1)
                     for x in range(min(sx, tx), max(sx, tx) + 1)]  # radius 2: whole box
            row.append(1 - max(e[y, x] for y, x in cells))
        expected.append(row)
    np.testing.assert_allclose(aff.numpy(), np.array(expected), rtol=0, atol=1e-7)
    assert aff[0, 0].item() == pytest.approx(1 - 0.3)  # (0,1)-(0,2)
    assert aff[2, 3].item() == pytest.approx(1 - 0.7)  # (1,2)-(2,1) over (1,1),(1,2),(2,1),(2,2)


def test_edge_to_affinity_equals_authors_index_gather():
    torch.manual_seed(0)
    pi = PathIndex(radius=5, size=(19, 23))
    edge = torch.rand(2, 19, 23)
    flat = edge.reshape(2, -1)
    gathered = []
    for ind in pi.path_indices():
        dist = flat[:, torch.from_numpy(ind).reshape(-1)].reshape(2, *ind.shape)
        gathered.append(1 - dist.amax(dim=2))
    np.testing.assert_array_equal(pi.edge_to_affinity(edge).numpy(),
                                  torch.cat(gathered, dim=1).numpy())
    # gradient flows to the edge map
    e = edge.clone().requires_grad_(True)
    pi.edge_to_affinity(e).sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0


def test_to_displacement_is_source_minus_destination():
    pi = PathIndex(radius=2, size=(3, 4))
    disp = torch.arange(2 * 12, dtype=torch.float32).reshape(1, 2, 3, 4)
    out = pi.to_displacement(disp)
    assert out.shape == (1, 2, 4, 4)
    flat = disp.reshape(2, -1)
    expected = flat[:, pi.src_indices][:, None, :] - flat[:, pi.dst_indices]
    np.testing.assert_array_equal(out[0].numpy(), expected.numpy())
    # channel 0 holds 4 y + x: src - dst = -(4 dy + dx)
    for d, (dy, dx) in enumerate(pi.directions):
        assert (out[0, 0, d] == -(4 * dy + dx)).all()
    tgt = pi.displacement_target()
    assert tgt.shape == (1, 2, 4, 1)
    assert tgt[0, :, :, 0].T.tolist() == pi.directions.tolist()
