"""camkit.boxes._component_tree: the max-tree equals skimage's, subtrees are node ranges, per-node boxes
and quad events equal direct labelling, the sparse-table range minimum equals brute force."""
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from box_maps import seeded_maps
from camkit.boxes import scoremap_to_uint8
from camkit.boxes._component_tree import ComponentTree, max_tree, quad_events, range_min


def _tree_nodes(pix_node, par_node, level):
    """A max-tree as a set of (level, parent level, own pixels) per node (independent of node ids)."""
    root = par_node == np.arange(level.size)
    assert (root | (level[par_node] < level)).all() and root.sum() == 1
    parent_level = np.where(root, -1, level[par_node])
    own = {}
    for p, nd in enumerate(pix_node.tolist()):
        own.setdefault(nd, []).append(p)
    return {(int(level[nd]), int(parent_level[nd]), tuple(own[nd])) for nd in range(level.size)}


def test_component_tree_equals_skimage_max_tree():
    """The basin + spanning-tree construction gives skimage's max-tree: same nodes, same own pixels."""
    skimage_max_tree = pytest.importorskip("skimage.morphology").max_tree
    rng = np.random.default_rng(17)
    images = [scoremap_to_uint8(m) for m, _ in seeded_maps(3, 36) if min(m.shape) >= 3]
    low = torch.tensor(rng.random((2, 1, 7, 7)), dtype=torch.float32)
    up = torch.nn.functional.interpolate(low, size=(64, 80), mode="bilinear", align_corners=False)[:, 0].numpy()
    images += [(u * 255).astype(np.uint8) for u in up]
    images += [rng.integers(0, 256, (40, 37)).astype(np.uint8), np.zeros((4, 5), np.uint8)]
    for img in images:
        for conn in (1, 2):
            parent, _ = skimage_max_tree(img, connectivity=conn)
            pf, vf, ar = parent.ravel(), img.ravel(), np.arange(img.size)
            canonical = (pf == ar) | (vf[pf] != vf)
            node_pixel = np.where(canonical, ar, pf)
            nodes = np.flatnonzero(canonical)
            index = np.full(img.size, -1)
            index[nodes] = np.arange(nodes.size)
            expected = _tree_nodes(index[node_pixel], index[node_pixel[pf[nodes]]], vf[nodes].astype(np.int64))
            assert _tree_nodes(*max_tree(img, conn)[:3]) == expected


def test_component_tree_subtrees_are_contiguous_ranges():
    """Nodes come in a preorder: the subtree of node k is exactly the nodes k .. end[k] - 1."""
    rng = np.random.default_rng(19)
    images = [scoremap_to_uint8(m) for m, _ in seeded_maps(4, 24) if min(m.shape) >= 3]
    images.append(rng.integers(0, 256, (30, 33)).astype(np.uint8))
    for img in images:
        for conn in (1, 2):
            _, par_node, level, end = max_tree(img, conn)
            m = level.size
            inside = np.zeros((m, m), bool)  # inside[a, k]: a is in k's subtree
            a = np.arange(m)
            inside[a, a] = True
            cur = a.copy()
            for _ in range(m):
                cur = par_node[cur]
                inside[a, cur] = True
            for k in range(m):
                assert np.array_equal(np.flatnonzero(inside[:, k]), np.arange(k, end[k]))


def test_tree_boxes_and_first_pixels_equal_labelling():
    """ComponentTree's per-node bbox (x from own-pixel minima, y from the first and last raster pixels) and first
    pixel equal those of the node's component labelled directly, for both connectivities."""
    rng = np.random.default_rng(23)
    images = [scoremap_to_uint8(m) for m, _ in seeded_maps(3, 28) if min(m.shape) >= 3]
    images += [rng.integers(0, 256, (21, 26)).astype(np.uint8), rng.integers(0, 3, (17, 30)).astype(np.uint8)]
    for img in images:
        for conn, struct in ((1, ndi.generate_binary_structure(2, 1)), (2, np.ones((3, 3), bool))):
            tree = ComponentTree(img, conn)
            for k in range(tree.level.size):
                py, px = divmod(int(tree.own_pixel[k]), img.shape[1])
                lab, _ = ndi.label(img >= tree.level[k], structure=struct)
                ys, xs = np.nonzero(lab == lab[py, px])
                got = (tree.x0[k], tree.y0[k], tree.x1[k], tree.y1[k], tree.first_pixel[k])
                assert got == (xs.min(), ys.min(), xs.max(), ys.max(), ys.min() * img.shape[1] + xs[0])



def test_range_min_equals_brute_force():
    """The sparse-table range minimum equals ``values[start:stop].min(0)`` for all ranges, every size."""
    rng = np.random.default_rng(31)
    for m in (1, 2, 3, 7, 8, 9, 33):
        values = rng.integers(-50, 50, (m, 3))
        start, stop = np.triu_indices(m + 1, 1)
        start, stop = start.astype(np.int64), stop.astype(np.int64)
        expected = np.stack([values[a:b].min(0) for a, b in zip(start, stop)])
        np.testing.assert_array_equal(range_min(values, start, stop), expected)


def test_quad_events_give_area_and_euler_number_at_every_threshold():
    """Summed over a component's pixels, the quad events give (2 * unfilled polygon area, 4 * Euler
    number) of the 8-connected components of ``u > t``, for every t (checked on the quads directly)."""
    rng = np.random.default_rng(37)
    for shape in ((1, 1), (1, 6), (5, 1), (2, 2), (6, 7), (9, 4)):
        for levels in (2, 4, 256):
            u = (rng.integers(0, levels, shape) * (255 // (levels - 1))).astype(np.uint8)
            ev = quad_events(u)
            for t in np.unique(np.r_[-1, u.ravel().astype(np.int64)])[:-1]:
                mask = u > t
                lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
                for c in range(1, n + 1):
                    comp = np.pad(lab == c, 1)
                    q = (comp[:-1, :-1].astype(int) + comp[:-1, 1:] + comp[1:, :-1] + comp[1:, 1:])
                    diag = (comp[:-1, :-1] & comp[1:, 1:] & ~comp[:-1, 1:] & ~comp[1:, :-1]) | \
                           (comp[:-1, 1:] & comp[1:, :-1] & ~comp[:-1, :-1] & ~comp[1:, 1:])
                    area2 = 2 * (q == 4).sum() + (q == 3).sum()
                    euler4 = (q == 1).sum() - (q == 3).sum() - 2 * diag.sum()
                    own = (lab == c).ravel()
                    got = ev[own & (u.ravel() > t)].sum(0)
                    assert got.tolist() == [area2, euler4], (shape, t, c)
