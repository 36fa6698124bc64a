"""The detector as one inference program with PaddleDetection's deploy interface; what both exports trace.

    DeployModel(model, num_select)(image, im_shape, scale_factor) -> (bbox, bbox_num)

image float32 [B, 3, H, W]: normalized images, zero-padded at the bottom / right to a common size.
im_shape float32 [B, 2]: (h, w) of each resized image before padding; the rest is the padding mask.
scale_factor float32 [B, 2]: (resized h / original h, resized w / original w).
bbox float32 [B * K, 6]: rows (class_id, score, x1, y1, x2, y2) in original-image pixels, image by image, best
first. bbox_num int32 [B]: K per image, K = min(num_select, queries * classes).

The detections are postprocess.PostProcess's without NMS (the top K sigmoid scores over all (query, class) pairs),
with no score threshold, so the program's output equals the dynamic graph's; callers threshold afterwards.
The original size is round(im_shape / scale_factor), as PaddleDetection's DETR post-processing computes it.
"""
import torch
from torch import nn

from .box_ops import box_cxcywh_to_xyxy


def padding_mask(image, im_shape):
    """image [B, 3, H, W], im_shape [B, 2] (h, w) -> bool [B, H, W], True beyond each image's (h, w)."""
    ys = torch.arange(image.shape[2], dtype=im_shape.dtype, device=image.device)
    xs = torch.arange(image.shape[3], dtype=im_shape.dtype, device=image.device)
    return (ys[None, :, None] >= im_shape[:, 0, None, None]) | (xs[None, None, :] >= im_shape[:, 1, None, None])


def top_detections(logits, boxes, orig_sizes, num_select):
    """logits [B, Q, C], boxes [B, Q, 4] cxcywh in [0, 1], orig_sizes [B, 2] (h, w)
    -> (bbox [B * K, 6] rows (label, score, x1, y1, x2, y2), bbox_num int32 [B]); PostProcess's top-k, batched."""
    b, q, c = logits.shape
    h, w = orig_sizes.to(boxes.dtype).unbind(1)
    xyxy = box_cxcywh_to_xyxy(boxes) * torch.stack([w, h, w, h], 1)[:, None, :]
    k = min(num_select, q * c)
    scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
    query, label = index // c, index % c
    picked = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    bbox = torch.cat([label[..., None].to(scores.dtype), scores[..., None], picked], -1)
    return bbox.reshape(-1, 6), torch.full((b,), k, dtype=torch.int32, device=bbox.device)


class DeployModel(nn.Module):
    """See the module docstring. `model`: a DACDETR in eval mode (its deformable attention on the reference
    path for export); `num_select`: model.postprocess.num_select."""

    def __init__(self, model, num_select):
        super().__init__()
        self.model = model
        self.num_select = num_select

    def forward(self, image, im_shape, scale_factor):
        out = self.model(image, padding_mask(image, im_shape))
        orig_sizes = torch.floor(im_shape / scale_factor + 0.5)
        return top_detections(out["pred_logits"], out["pred_boxes"], orig_sizes, self.num_select)
