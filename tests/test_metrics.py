"""Every metric against values computed by hand on the 4×4 two-class model of evalkit, plus the batched
implementation against a plain per-image loop and the vectorised AP against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit import hand_adapter, sigmoid
from explainers import ExplainersError
from explainers.metrics import BatchContext, Category, Direction, MetricInputs, available_metrics, get_metric
from explainers.metrics.perturbation import order_ranks, perturbation_auc, step_counts, tie_order
from explainers.metrics.segmentation import average_precision

WHITE = torch.ones(1, 3, 4, 4)
# Most relevant first in row-major order: pixel 0 (top-left) has the highest value.
DESCENDING = (16 - torch.arange(16.0)).reshape(1, 4, 4)


def run(names, maps, classes=None, images=WHITE, grid=False, max_batch=64, **options):
    adapter = hand_adapter(grid=grid)
    with torch.no_grad():
        logits = adapter.predict(images)
    classes = logits.argmax(1) if classes is None else torch.as_tensor(classes)
    inputs = MetricInputs(
        images=images,
        maps=maps,
        classes=classes,
        clean_logits=logits,
        ids=[str(i) for i in range(len(images))],
    )
    ctx = BatchContext(adapter, inputs, max_batch=max_batch)
    out = {n: get_metric(n, **options.get(n, {})).compute(ctx) for n in names}
    return out, ctx


def trapz(y, dx):
    y = np.asarray(y, dtype=np.float64)
    return 100 * dx * (y.sum() - (y[0] + y[-1]) / 2)


def test_step_counts_are_exact_floors_and_stop_at_09():
    # ⌊16·i/10⌋ for i = 0..9: no point at p = 1.0.
    assert step_counts(16, 10, include_end=False) == (0, 1, 3, 4, 6, 8, 9, 11, 12, 14)
    # 10·3/10 must be exactly 3 (0.3·10 in floating point is 3.0000000000000004, floor 3; 0.7·10 → 7).
    assert step_counts(10, 10, include_end=False) == tuple(range(10))
    assert step_counts(16, 10, include_end=True)[-1] == 16


def test_pos_neg_by_hand():
    # Top-row pixels 0..3 are the object. POS with DESCENDING removes 0,1,2,… first: top-row pixels
    # removed at k = 0,1,3,4,… → 0,1,3,4,4,… → logit0 = 4,2,−2,−4 vs logit1 = 0.5 → y = 1,1,0,0,…
    out, ctx = run(["pos", "neg"], DESCENDING)
    np.testing.assert_array_equal(out["pos"].curves[0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert out["pos"].values[0] == pytest.approx(100 * (0.1 + 0.05))  # 15
    # NEG removes 15,14,… first; the top row goes only from k = 13 on: at k = 14 (p = 0.9) two are gone.
    np.testing.assert_array_equal(out["neg"].curves[0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    assert out["neg"].values[0] == pytest.approx(100 * (0.8 + 0.05))  # 85
    assert get_metric("pos").direction == "lower" and get_metric("neg").direction == "higher"
    # 9 perturbed forwards per image per curve; p = 0 reuses the clean forward.
    assert ctx.forwarded == 18


def test_ties_follow_the_fixed_scrambled_order_in_both_orders():
    tie = tie_order(16).tolist()
    assert sorted(tie) == list(range(16)) and tie != list(range(16)) and tie == tie_order(16).tolist()
    # A constant map: every pixel tied, so POS and NEG both remove pixels in tie order. y = 1 while at most
    # one top-row (object) pixel is gone (logit0 = 4 − 2r > 0.5).
    flat = torch.zeros(1, 4, 4)
    out, _ = run(["pos", "neg"], flat)
    ys = [float(sum(u in (0, 1, 2, 3) for u in tie[:k]) <= 1) for k in step_counts(16, 10, include_end=False)]
    expected = trapz(ys, 0.1)
    assert out["pos"].values[0] == pytest.approx(expected)
    assert out["neg"].values[0] == pytest.approx(expected)
    # Two tied pairs: {1, 2} (value 1) and {0, 3} (value 0); within a pair the one earlier in tie order leads.
    position = {u: i for i, u in enumerate(tie_order(4).tolist())}
    high = sorted([1, 2], key=position.__getitem__)
    low = sorted([0, 3], key=position.__getitem__)
    scores = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    expected_order = high + low  # most relevant first
    ranks = order_ranks(scores, most_relevant_first=True)[0].tolist()
    assert [ranks.index(i) for i in range(4)] == expected_order
    ranks = order_ranks(scores, most_relevant_first=False)[0].tolist()
    assert [ranks.index(i) for i in range(4)] == low + high


def test_class_conventions():
    # Scoring class 1 (say a ground-truth label the model gets wrong) flips every point: AUC = 90 − 15.
    out, _ = run(["pos"], DESCENDING, classes=[1])
    np.testing.assert_array_equal(out["pos"].curves[0], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    assert out["pos"].values[0] == pytest.approx(75)
    assert get_metric("pos").classes == ("target", "predicted")
    assert get_metric("map").classes == ("predicted",)


def test_deletion_and_neg_deletion_by_hand():
    out, _ = run(["deletion", "neg-deletion"], DESCENDING)
    # p(class 0) = sigmoid(logit0 − 0.5) with logit0 = 4 − 2·(top-row pixels removed).
    pos_removed = [0, 1, 3, 4, 4, 4, 4, 4, 4, 4]
    neg_removed = [0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    y = [sigmoid(4 - 2 * r - 0.5) for r in pos_removed]
    np.testing.assert_allclose(out["deletion"].curves[0], y, rtol=1e-6)
    assert out["deletion"].values[0] == pytest.approx(trapz(y, 0.1), rel=1e-6)
    y = [sigmoid(4 - 2 * r - 0.5) for r in neg_removed]
    assert out["neg-deletion"].values[0] == pytest.approx(trapz(y, 0.1), rel=1e-6)


def test_insertion_by_hand():
    out, ctx = run(["insertion"], DESCENDING)
    # From black (logit0 = −4) add pixels 0,1,2,… : k = ⌊16·i/10⌋, i = 0..10 → top-row present min(k, 4).
    ks = [0, 1, 3, 4, 6, 8, 9, 11, 12, 14, 16]
    y = [sigmoid(2 * min(k, 4) - 4 - 0.5) for k in ks]
    np.testing.assert_allclose(out["insertion"].curves[0], y, rtol=1e-6)
    assert out["insertion"].values[0] == pytest.approx(trapz(y, 0.1), rel=1e-6)
    # 11 points: the full image reuses the clean forward, the black one is forwarded once.
    assert ctx.forwarded == 10
    out, _ = run(["insertion"], DESCENDING, insertion={"steps": 4})
    y = [sigmoid(2 * min(k, 4) - 4 - 0.5) for k in [0, 4, 8, 12, 16]]
    assert out["insertion"].values[0] == pytest.approx(trapz(y, 0.25), rel=1e-6)


def test_patch_insertion_deletion_by_hand():
    # 2×2 grid of 2×2 patches. Patch means of DESCENDING: 13.5, 11.5, 5.5, 3.5 → order 0,1,2,3; the top
    # row lies in patches 0 and 1 (two pixels each).
    black = {"patch-deletion": {"fill": "black"}, "patch-insertion": {"fill": "black"}}
    out, _ = run(["patch-deletion", "patch-insertion"], DESCENDING, grid=True, **black)
    removed = [0, 2, 4, 4, 4]
    y = [sigmoid(4 - 2 * r - 0.5) for r in removed]
    np.testing.assert_allclose(out["patch-deletion"].curves[0], y, rtol=1e-6)
    assert out["patch-deletion"].values[0] == pytest.approx(trapz(y, 0.25), rel=1e-6)
    present = [0, 2, 4, 4, 4]
    y = [sigmoid(2 * p - 4 - 0.5) for p in present]
    assert out["patch-insertion"].values[0] == pytest.approx(trapz(y, 0.25), rel=1e-6)
    # fill=mean, the default (the LETA protocol): removed pixels become the explainee's mean colour (0 after
    # normalisation): logit0 = present; insertion starts from the mean-colour image (logit0 = 0).
    out, _ = run(["patch-deletion", "patch-insertion"], DESCENDING, grid=True)
    y = [sigmoid(4 - r - 0.5) for r in removed]
    np.testing.assert_allclose(out["patch-deletion"].curves[0], y, rtol=1e-6)
    assert out["patch-deletion"].values[0] == pytest.approx(trapz(y, 0.25), rel=1e-6)
    y = [sigmoid(p - 0.5) for p in present]
    assert out["patch-insertion"].values[0] == pytest.approx(trapz(y, 0.25), rel=1e-6)
    assert get_metric("patch-deletion").options["fill"] == "mean"
    # Ties between patches follow the tie order of 4 units: top-row pixels sit in patches 0 and 1, two each.
    out_flat, _ = run(["patch-deletion"], torch.zeros(1, 4, 4), grid=True, **black)
    tie = tie_order(4).tolist()
    removed_flat = [2 * sum(u in (0, 1) for u in tie[:k]) for k in range(5)]
    assert out_flat["patch-deletion"].values[0] == pytest.approx(
        trapz([sigmoid(4 - 2 * r - 0.5) for r in removed_flat], 0.25)
    )


def test_adp_pic_by_hand():
    images = torch.ones(3, 3, 4, 4)
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, :] = 1.0  # keeps the object: logit0 = 4 = clean → no drop, no increase
    maps[1, 0, :] = 0.5  # halves it: z = 0 → logit0 = 0
    maps[2, 0, :] = 0.5
    out, _ = run(["adp", "pic"], maps, classes=[0, 0, 1], images=images)
    p_full0, p_half0 = sigmoid(3.5), sigmoid(-0.5)
    np.testing.assert_allclose(out["adp"].values, [0, 100 * (p_full0 - p_half0) / p_full0, 0], rtol=1e-6)
    # Class 1: p_full = sigmoid(−3.5) < p_mask = sigmoid(0.5): an increase.
    np.testing.assert_array_equal(out["pic"].values, [0, 0, 100])


def test_adp_refuses_maps_outside_unit_range():
    metric = get_metric("adp")
    with pytest.raises(ExplainersError, match=r"normalize=minmax"):
        metric.check_maps({"path": "m.h5", "min": -2.0, "max": 3.0, "minmax_normalized": False})
    get_metric("adp", normalize="minmax").check_maps({"path": "m.h5", "min": -2.0, "max": 3.0})
    # minmax rescales to [0,1]: DESCENDING becomes (v − 1)/15, i.e. 1 on pixel 0.
    out, _ = run(["adp"], DESCENDING, adp={"normalize": "minmax"})
    z = sum(2 * (16 - i - 1) / 15 - 1 for i in range(4))
    assert out["adp"].values[0] == pytest.approx(
        100 * (sigmoid(3.5) - sigmoid(z - 0.5)) / sigmoid(3.5), rel=1e-6
    )


def seg_inputs():
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.3, 0.3], [0.3, 0.3]]])
    gt = torch.tensor([[[1, 0], [1, 0]], [[1, 1], [1, 0]]], dtype=torch.bool)
    return maps, gt


def test_segmentation_by_hand():
    maps, gt = seg_inputs()
    images = torch.ones(2, 3, 4, 4)  # not read by the segmentation metrics
    adapter = hand_adapter()
    inputs = MetricInputs(
        images=images,
        maps=maps,
        classes=torch.zeros(2, dtype=torch.long),
        clean_logits=torch.zeros(2, 2),
        ids=["a", "b"],
        gt=gt,
    )
    ctx = BatchContext(adapter, inputs)
    pa, miou, ap = (get_metric(n) for n in ("pixel-accuracy", "miou", "map"))
    r_pa, r_miou, r_ap = pa.compute(ctx), miou.compute(ctx), ap.compute(ctx)
    # Image 1: R = [1, .5, 0, 0], t = .375 → pred [1, 1, 0, 0] vs gt [1, 0, 1, 0]: 2 of 4 right,
    # IoU fg 1/3, bg 1/3. Image 2: constant map → R = 0, nothing foreground: 1 of 4 right, IoU fg 0/3, bg 1/4.
    np.testing.assert_allclose(r_pa.values, [50, 25])
    assert pa.pooled_value(r_pa.counts) == pytest.approx(100 * 3 / 8)
    np.testing.assert_allclose(r_miou.values, [100 / 3, 100 * 0.125])
    # Pooled: fg 1/6, bg 2/7 — not the mean of the per-image values.
    assert miou.pooled_value(r_miou.counts) == pytest.approx(100 * (1 / 6 + 2 / 7) / 2)
    # AP on [1 − R, R]: image 1 groups (score, tp, fp) = (1: 2, 1), (.5: 3, 2), (0: 4, 4) of 4 positives →
    # 2/4·2/3 + 1/4·3/5 + 1/4·4/8; image 2: (1: 1, 3), (0: 4, 4) → 1/4·1/4 + 3/4·1/2.
    np.testing.assert_allclose(r_ap.values, [100 * (1 / 3 + 0.15 + 0.125), 100 * (1 / 16 + 3 / 8)])
    assert ap.direction == "higher" and pa.aggregation == "pooled" and ap.aggregation == "mean"


def test_segmentation_ignore_region():
    maps, gt = seg_inputs()
    ignore = torch.zeros_like(gt)
    ignore[0, 0, 1] = True  # pixel 1 of image 1
    inputs = MetricInputs(
        images=torch.ones(2, 3, 4, 4),
        maps=maps,
        classes=torch.zeros(2, dtype=torch.long),
        clean_logits=torch.zeros(2, 2),
        ids=["a", "b"],
        gt=gt,
        ignore=ignore,
    )
    ctx = BatchContext(hand_adapter(), inputs)
    r_pa = get_metric("pixel-accuracy").compute(ctx)
    np.testing.assert_allclose(r_pa.values, [100 * 2 / 3, 25])
    assert r_pa.counts[0].tolist() == [2, 3, 1, 2, 1, 2]
    r_ap = get_metric("map").compute(ctx)
    # Without pixel 1's two entries: (1: 2, 1), (0: 3, 3) of 3 positives → 2/3·2/3 + 1/3·1/2.
    assert r_ap.values[0] == pytest.approx(100 * (4 / 9 + 1 / 6))


def test_average_precision_equals_sklearn():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    # Quantised scores create many ties, the hard case.
    scores = (torch.rand(6, 200, generator=g) * 8).round() / 8
    labels = torch.rand(6, 200, generator=g) > 0.6
    valid = torch.rand(6, 200, generator=g) > 0.2
    ours = average_precision(scores, labels, valid)
    for i in range(6):
        keep = valid[i].numpy()
        ref = average_precision_score(labels[i].numpy()[keep], scores[i].numpy()[keep])
        assert ours[i].item() == pytest.approx(ref, abs=1e-12)
    assert average_precision(scores[:1], torch.zeros(1, 200, dtype=torch.bool)).item() == 0.0


def naive_curve(model_logits, image, vmap, cls, *, descending: bool):
    """The POS/NEG curve (docs/metrics.md) one image and one point at a time, written plainly."""
    h, w = vmap.shape
    flat = vmap.flatten().tolist()
    # Stable: sort (−v, tie position) or (v, tie position).
    position = {u: i for i, u in enumerate(tie_order(h * w).tolist())}
    order = sorted(range(h * w), key=lambda i: (-flat[i] if descending else flat[i], position[i]))
    correct, probs = [], []
    for i in range(10):
        k = (h * w * i) // 10
        x = image.clone().reshape(3, -1)
        for pix in order[:k]:
            x[:, pix] = 0.0
        logits = model_logits(x.reshape(1, 3, h, w))[0]
        correct.append(float(logits.argmax() == cls))
        probs.append(float(torch.softmax(logits, -1)[cls]))
    return np.array(correct), np.array(probs)


def test_batched_equals_naive_loop_on_a_vit():
    import explainers
    from conftest import build_hf_model

    adapter = explainers.load_explainee(
        build_hf_model("vit", image_size=16, patch_size=8), mean=[0.5] * 3, std=[0.5] * 3
    )
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 16, 16, generator=g)
    maps = (torch.rand(3, 16, 16, generator=g) * 4).round()  # ties on purpose
    with torch.no_grad():
        logits = adapter.predict(images)
    classes = torch.tensor([0, 3, int(logits[2].argmax())])
    inputs = MetricInputs(images=images, maps=maps, classes=classes, clean_logits=logits, ids=list("abc"))
    ctx = BatchContext(adapter, inputs, max_batch=7)  # chunks that cut across images and points
    res = {n: get_metric(n).compute(ctx) for n in ("pos", "neg", "deletion", "neg-deletion")}
    with torch.no_grad():
        for b in range(3):
            for name, desc in (("pos", True), ("neg", False)):
                correct, probs = naive_curve(
                    adapter.predict, images[b], maps[b], int(classes[b]), descending=desc
                )
                np.testing.assert_array_equal(res[name].curves[b], correct)
                prob_name = "deletion" if desc else "neg-deletion"
                np.testing.assert_allclose(res[prob_name].curves[b], probs, rtol=1e-5, atol=1e-6)
                assert res[name].values[b] == pytest.approx(trapz(correct, 0.1))
    auc = perturbation_auc(adapter, images, maps, classes, order="pos", max_batch=5)
    np.testing.assert_allclose(auc.numpy(), res["pos"].values)


def test_registry():
    names = available_metrics()
    published = {"pos", "neg", "deletion", "neg-deletion", "insertion", "patch-insertion", "patch-deletion"}
    assert published | {"adp", "pic", "pixel-accuracy", "miou", "map"} <= set(names)
    for n in names:  # every registered metric, so that a new one is held to the same contract
        m = get_metric(n)
        # enums, not free strings: a typo such as "lower " cannot slip into a leaderboard's ranking
        assert m.name == n and isinstance(m.direction, Direction) and isinstance(m.category, Category) and m.unit
        assert set(m.classes) <= {"target", "predicted"} and m.aggregation in ("mean", "pooled")
    with pytest.raises(ExplainersError, match=r"valid metrics: .*pos"):
        get_metric("pos-auc")
    with pytest.raises(ExplainersError, match="no option"):
        get_metric("pos", steps=3)
    with pytest.raises(ExplainersError, match="steps"):
        get_metric("insertion", steps=0)
