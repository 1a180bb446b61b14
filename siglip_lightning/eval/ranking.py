"""Recall@K with bounded memory: similarities are computed block by block and only a running top-k is kept.

A dense evaluation of 50k images x 250k captions would hold a 50k x 250k score matrix (50 GB in
float32). Here a block of ``query_chunk x key_chunk`` scores exists at a time, plus a
``query_chunk x k`` running top-k, so memory does not grow with the number of keys.

Ties between scores are broken as ``torch.topk`` breaks them (as open_clip's retrieval does).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch


def topk_indices(queries: torch.Tensor, keys: torch.Tensor, k: int, query_chunk: int = 1024,
                 key_chunk: int = 16384) -> torch.Tensor:
    """``[num_queries, min(k, num_keys)]`` indices of the keys with the highest dot product, best first."""
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must be [n, d] with the same d")
    num_queries, num_keys = queries.shape[0], keys.shape[0]
    k = min(k, num_keys)
    out = torch.empty(num_queries, k, dtype=torch.long, device=queries.device)
    if num_queries == 0 or k == 0:
        return out
    for q_start in range(0, num_queries, query_chunk):
        block = queries[q_start:q_start + query_chunk].float()
        best_scores: Optional[torch.Tensor] = None
        best_index: Optional[torch.Tensor] = None
        for k_start in range(0, num_keys, key_chunk):
            scores = block @ keys[k_start:k_start + key_chunk].float().T
            top_scores, top_index = scores.topk(min(k, scores.shape[1]), dim=1)
            top_index += k_start
            if best_scores is not None:
                # Merge the kept top-k with this block's top-k; the best k of the union are the new ones.
                top_scores = torch.cat([best_scores, top_scores], dim=1)
                top_index = torch.cat([best_index, top_index], dim=1)
                top_scores, where = top_scores.topk(min(k, top_scores.shape[1]), dim=1)
                top_index = top_index.gather(1, where)
            best_scores, best_index = top_scores, top_index
        out[q_start:q_start + block.shape[0]] = best_index
    return out


def retrieval_hits(queries: torch.Tensor, keys: torch.Tensor, query_group: torch.Tensor, key_group: torch.Tensor,
                   ks: Sequence[int] = (1, 5, 10), **chunks: int) -> torch.Tensor:
    """``[num_queries, len(ks)]`` booleans: is a key of the query's group among its top K?

    A key is a right answer for a query when their groups are equal (image -> text: a caption's
    group is its image, so any of the image's captions counts; text -> image: the one image).
    """
    top = topk_indices(queries, keys, max(ks), **chunks)
    right = key_group.to(top.device)[top] == query_group.to(top.device)[:, None]
    # cummax along the ranking: right at rank r means a hit for every K > r.
    hit_by_rank = right.int().cummax(dim=1).values.bool()
    columns = [hit_by_rank[:, min(k, top.shape[1]) - 1] for k in ks]
    return torch.stack(columns, dim=1)


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                ks: Sequence[int] = (1, 5, 10), **chunks: int) -> Dict[str, float]:
    """Image -> text and text -> image Recall@K of one caption set, on one process.

    Args:
        image_features: ``[num_images, d]`` normalised image embeddings.
        text_features: ``[num_captions, d]`` normalised caption embeddings.
        caption_image: ``[num_captions]`` the image index of each caption.
        ks: the K values.
        chunks: ``query_chunk`` / ``key_chunk`` of :func:`topk_indices`.
    """
    counts = recall_counts(image_features, text_features, caption_image, ks, **chunks)
    return {key: value / max(1, total) for key, (value, total) in counts.items()}


def recall_counts(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                  ks: Sequence[int] = (1, 5, 10), image_queries: Optional[torch.Tensor] = None,
                  text_queries: Optional[torch.Tensor] = None, **chunks: int) -> Dict[str, tuple]:
    """``{metric: (hits, queries)}`` over the given query subsets (default: all).

    Under DDP each rank passes its own share of query indices; summing hits and queries over
    ranks then counts every query exactly once.
    """
    device = image_features.device
    caption_image = caption_image.to(device)
    image_ids = torch.arange(image_features.shape[0], device=device)
    if image_queries is None:
        image_queries = image_ids
    if text_queries is None:
        text_queries = torch.arange(text_features.shape[0], device=device)
    image_queries, text_queries = image_queries.to(device), text_queries.to(device)
    i2t = retrieval_hits(image_features[image_queries], text_features, image_queries, caption_image, ks, **chunks)
    t2i = retrieval_hits(text_features[text_queries], image_features, caption_image[text_queries], image_ids, ks,
                         **chunks)
    counts = {}
    for column, k in enumerate(ks):
        counts[f"image_to_text_R@{k}"] = (int(i2t[:, column].sum()), int(i2t.shape[0]))
        counts[f"text_to_image_R@{k}"] = (int(t2i[:, column].sum()), int(t2i.shape[0]))
    return counts
