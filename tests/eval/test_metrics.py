"""Recall@K and top-k accuracy on embeddings whose answers are known, and chunked == dense."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from siglip_lightning.eval.ranking import recall_at_k, topk_indices
from siglip_lightning.eval.zeroshot import topk_accuracy


def dense_recall(image_features, text_features, caption_image, ks):
    """The plain formula: the whole similarity matrix, the rank of the best right answer."""
    scores = image_features @ text_features.T  # [images, captions]
    out = {}
    right_i2t = caption_image[None, :] == torch.arange(image_features.shape[0])[:, None]
    best_right = scores.masked_fill(~right_i2t, -math.inf).max(dim=1).values
    i2t_rank = (scores.masked_fill(right_i2t, -math.inf) > best_right[:, None]).sum(dim=1)
    t2i_scores = scores.T
    own = t2i_scores.gather(1, caption_image[:, None])
    t2i_rank = (t2i_scores > own).sum(dim=1)
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t_rank < k).double().mean())
        out[f"text_to_image_R@{k}"] = float((t2i_rank < k).double().mean())
    return out


def random_set(num_images, captions_per_image, dim, generator, noise=None):
    images = F.normalize(torch.randn(num_images, dim, generator=generator), dim=-1)
    caption_image = torch.arange(num_images).repeat_interleave(captions_per_image)
    if noise is None:  # unrelated captions
        texts = torch.randn(caption_image.shape[0], dim, generator=generator)
    else:  # captions near their image
        texts = images[caption_image] + noise * torch.randn(caption_image.shape[0], dim, generator=generator)
    return images, F.normalize(texts, dim=-1), caption_image


@pytest.mark.parametrize("query_chunk,key_chunk", [(7, 13), (1000, 3), (64, 100000)])
def test_chunked_topk_matches_dense_topk(query_chunk, key_chunk):
    generator = torch.Generator().manual_seed(query_chunk + key_chunk)
    queries, keys = torch.randn(53, 16, generator=generator), torch.randn(101, 16, generator=generator)
    expected = (queries @ keys.T).topk(10, dim=1).indices
    assert torch.equal(topk_indices(queries, keys, 10, query_chunk, key_chunk), expected)
    # k larger than the number of keys: all keys, ranked
    assert torch.equal(topk_indices(queries, keys[:4], 10, 5, 3), (queries @ keys[:4].T).topk(4, dim=1).indices)


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_recall_matches_dense_formula(seed):
    generator = torch.Generator().manual_seed(seed)
    images, texts, caption_image = random_set(97, 5, 24, generator, noise=1.2)
    # an uneven caption count: drop some captions so images have 1..5 captions
    keep = torch.rand(caption_image.shape[0], generator=generator) > 0.3
    keep[::5] = True
    texts, caption_image = texts[keep], caption_image[keep]
    ks = (1, 5, 10)
    chunked = recall_at_k(images, texts, caption_image, ks, query_chunk=11, key_chunk=17)
    dense = dense_recall(images, texts, caption_image, ks)
    assert chunked == pytest.approx(dense, abs=1e-12)
    assert 0.05 < chunked["image_to_text_R@1"] < 0.95  # the case is neither trivial nor hopeless


def test_perfect_model_recalls_one():
    generator = torch.Generator().manual_seed(2)
    images, texts, caption_image = random_set(200, 5, 32, generator, noise=0.01)
    recalls = recall_at_k(images, texts, caption_image, (1, 5, 10), query_chunk=64, key_chunk=100)
    assert all(value == 1.0 for value in recalls.values()), recalls


def test_unrelated_model_is_at_chance():
    generator = torch.Generator().manual_seed(3)
    num_images, per_image, ks = 400, 5, (1, 5, 10)
    images, texts, caption_image = random_set(num_images, per_image, 64, generator)
    recalls = recall_at_k(images, texts, caption_image, ks, query_chunk=100, key_chunk=333)
    captions = num_images * per_image
    for k in ks:
        # text -> image: the one right image among num_images; image -> text: any of 5 among 5N
        t2i = k / num_images
        i2t = 1 - math.comb(captions - per_image, k) / math.comb(captions, k)
        for value, expected, queries in ((recalls[f"text_to_image_R@{k}"], t2i, captions),
                                         (recalls[f"image_to_text_R@{k}"], i2t, num_images)):
            sigma = math.sqrt(expected * (1 - expected) / queries)
            assert abs(value - expected) < 4 * sigma + 1e-3, (k, value, expected)


def test_hand_made_recall():
    # Three images on the unit circle at 0, 90 and 180 degrees; four captions.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    angle = torch.tensor([10.0, 100.0, 60.0, 200.0]) * math.pi / 180
    texts = torch.stack([angle.cos(), angle.sin()], dim=1)
    caption_image = torch.tensor([0, 1, 0, 2])
    # caption scores: c0 (10 deg), c1 (100), c2 (60), c3 (200)
    # image 0 (0 deg) ranks c0, c2, c1, c3 -> own c0 first           : R@1 hit
    # image 1 (90 deg) ranks c1, c2, c0, c3 -> own c1 first          : R@1 hit
    # image 2 (180 deg) ranks c3, c1, c2, c0 -> own c3 first         : R@1 hit
    # c0 ranks images 0, 1, 2 -> right at 1; c1 ranks 1, 2?: cos(100)=-.17 (img0), sin=.98 (img1),
    #   -cos=.17 (img2) -> 1, 2, 0: right at 1; c2 (60 deg): img0 .5, img1 .87 -> 1, 0, 2: right (0) at 2;
    # c3 (200 deg): img2 .94 first: right at 1.
    recalls = recall_at_k(images, texts, caption_image, (1, 2), query_chunk=2, key_chunk=3)
    assert recalls == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 3 / 4,
                       "image_to_text_R@2": 1.0, "text_to_image_R@2": 1.0}
    # Move caption 0 to 75 degrees: image 0 now ranks c2 (60) first, c0 (75) second.
    texts[0] = torch.tensor([math.cos(75 * math.pi / 180), math.sin(75 * math.pi / 180)])
    recalls = recall_at_k(images, texts, caption_image, (1, 2))
    # image 0: own captions c0 (75), c2 (60): c2 is its best -> still R@1 (any caption counts)
    # c0 (75 deg) now ranks image 1 first (sin 75 > cos 75): miss at 1, hit at 2; c2 as before.
    assert recalls == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1 / 2,
                       "image_to_text_R@2": 1.0, "text_to_image_R@2": 1.0}


def dense_topk_accuracy(features, labels, classifier, k):
    top = (features @ classifier.T).topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).double().mean())


def test_topk_accuracy_known_answers():
    generator = torch.Generator().manual_seed(4)
    classifier = F.normalize(torch.randn(50, 32, generator=generator), dim=-1)
    labels = torch.randint(0, 50, (2000,), generator=generator)
    perfect = topk_accuracy(classifier[labels], labels, classifier)
    assert perfect == {"top1": 1.0, "top5": 1.0}
    unrelated = topk_accuracy(F.normalize(torch.randn(2000, 32, generator=generator), dim=-1), labels, classifier)
    for k, chance in ((1, 1 / 50), (5, 5 / 50)):
        sigma = math.sqrt(chance * (1 - chance) / 2000)
        assert abs(unrelated[f"top{k}"] - chance) < 4 * sigma
    noisy = classifier[labels] + 0.9 * torch.randn(2000, 32, generator=generator) / math.sqrt(32)
    got = topk_accuracy(noisy, labels, classifier, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert got[f"top{k}"] == pytest.approx(dense_topk_accuracy(noisy, labels, classifier, k), abs=1e-6)


def test_topk_accuracy_hand_made():
    classifier = torch.eye(3)
    # scores per class are the features themselves
    features = torch.tensor([[0.9, 0.5, 0.1],   # label 0: rank 1
                             [0.9, 0.5, 0.1],   # label 1: rank 2
                             [0.9, 0.5, 0.1],   # label 2: rank 3
                             [0.2, 0.1, 0.7]])  # label 2: rank 1
    labels = torch.tensor([0, 1, 2, 2])
    assert topk_accuracy(features, labels, classifier, ks=(1, 2, 3)) == {"top1": 0.5, "top2": 0.75, "top3": 1.0}


def test_perfect_model_with_shuffled_answers_is_at_chance():
    """Right embeddings, wrong answer key: the caption -> image assignment shuffled."""
    generator = torch.Generator().manual_seed(6)
    num_images, per_image, k = 400, 5, 10
    images, texts, caption_image = random_set(num_images, per_image, 64, generator, noise=0.02)
    assert recall_at_k(images, texts, caption_image, (k,))["text_to_image_R@10"] == 1.0
    shuffled = caption_image[torch.randperm(caption_image.shape[0], generator=generator)]
    recalls = recall_at_k(images, texts, shuffled, (k,), query_chunk=128, key_chunk=700)
    captions = num_images * per_image
    for value, expected, queries in (
            (recalls["text_to_image_R@10"], k / num_images, captions),
            (recalls["image_to_text_R@10"], 1 - math.comb(captions - per_image, k) / math.comb(captions, k),
             num_images)):
        sigma = math.sqrt(expected * (1 - expected) / queries)
        assert abs(value - expected) < 4 * sigma + 2e-3, (value, expected)
    # zero-shot: perfect image features, labels shuffled
    classifier = F.normalize(torch.randn(40, 32, generator=generator), dim=-1)
    labels = torch.randint(0, 40, (4000,), generator=generator)
    shuffled_labels = labels[torch.randperm(4000, generator=generator)]
    top = topk_accuracy(classifier[labels], shuffled_labels, classifier)
    for k, chance in ((1, 1 / 40), (5, 5 / 40)):
        assert abs(top[f"top{k}"] - chance) < 4 * math.sqrt(chance * (1 - chance) / 4000) + 2e-3


def test_topk_accuracy_in_chunks_equals_the_plain_formula():
    """Images are scored a chunk at a time (bounded memory); an uneven last chunk counts the same."""
    generator = torch.Generator().manual_seed(9)
    classifier = F.normalize(torch.randn(20, 16, generator=generator), dim=-1)
    labels = torch.randint(0, 20, (103,), generator=generator)
    features = F.normalize(classifier[labels] + 0.3 * torch.randn(103, 16, generator=generator), dim=-1)
    got = topk_accuracy(features, labels, classifier, chunk=10)
    for k in (1, 5):
        assert got[f"top{k}"] == pytest.approx(dense_topk_accuracy(features, labels, classifier, k), abs=1e-6)
