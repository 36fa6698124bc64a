"""The detector as one inference program with PaddleDetection's deploy interface; what both exports trace.

    DeployModel(model, num_select, nms_iou, pre_nms_topk)(image, im_shape, scale_factor) -> (bbox, bbox_num)

image float32 [B, 3, H, W]: normalized images, zero-padded at the bottom / right to a common size.
im_shape float32 [B, 2]: (h, w) of each resized image before padding; the rest is the padding mask.
scale_factor float32 [B, 2]: (resized h / original h, resized w / original w).
bbox float32 [sum of K, 6]: rows (class_id, score, x1, y1, x2, y2) in original-image pixels, image by image, best
first. bbox_num int32 [B]: K per image; without NMS K = min(num_select, queries * classes), with NMS K <= num_select.

The detections are postprocess.PostProcess's (the top sigmoid scores over all (query, class) pairs, then with
nms_iou class-wise greedy NMS keeping at most num_select), with no score threshold, so the program's output equals
the dynamic graph's; callers threshold afterwards. NMS is one op, nms_keep, over the whole batch: PaddleDetection's
multiclass_nms3 kernel, which paddle.inference runs as it is.
The original size is round(im_shape / scale_factor), as PaddleDetection's DETR post-processing computes it.
"""
import paddle
from paddle import nn

from .box_ops import box_cxcywh_to_xyxy


def padding_mask(image, im_shape):
    """image [B, 3, H, W], im_shape [B, 2] (h, w) -> bool [B, H, W], True beyond each image's (h, w)."""
    ys = paddle.arange(image.shape[2], dtype=im_shape.dtype)
    xs = paddle.arange(image.shape[3], dtype=im_shape.dtype)
    return (ys[None, :, None] >= im_shape[:, 0, None, None]) | (xs[None, None, :] >= im_shape[:, 1, None, None])


def top_detections(logits, boxes, orig_sizes, num_select):
    """logits [B, Q, C], boxes [B, Q, 4] cxcywh in [0, 1], orig_sizes [B, 2] (h, w)
    -> (bbox [B * K, 6] rows (label, score, x1, y1, x2, y2), bbox_num int32 [B]); PostProcess's top-k, batched."""
    b, q, c = logits.shape
    h, w = paddle.unbind(orig_sizes.astype(boxes.dtype), axis=1)
    xyxy = box_cxcywh_to_xyxy(boxes) * paddle.stack([w, h, w, h], axis=1)[:, None, :]
    k = min(num_select, q * c)
    scores, index = paddle.topk(paddle.nn.functional.sigmoid(logits).flatten(1), k, axis=1)
    query, label = index // c, index % c
    picked = paddle.take_along_axis(xyxy, query[..., None].tile([1, 1, 4]), 1)
    bbox = paddle.concat([label[..., None].astype(scores.dtype), scores[..., None], picked], -1)
    return bbox.reshape([-1, 6]), paddle.full([b], k, dtype="int32")


def nms_keep(boxes, scores, iou_threshold, max_keep):
    """boxes [B, K, 4] xyxy, scores [B, K] -> bool [B, K]: the boxes greedy NMS keeps in each image (a box is
    dropped when its IoU with a kept, higher-scoring one exceeds iou_threshold), at most max_keep per image.

    multiclass_nms3 with one class and no score threshold; its index output counts boxes over the flattened batch.
    Unlike postprocess.nms it lets zero-area boxes suppress each other (see nms_detections).
    """
    index = paddle._C_ops.multiclass_nms3(boxes, scores[:, None, :], None, -1.0, -1, max_keep, iou_threshold, True,
                                          1.0, -1)[1].flatten()
    keep = paddle.zeros_like(scores, dtype="int32").flatten()
    keep = paddle.scatter(keep, index, paddle.ones_like(index), overwrite=True)
    return keep.reshape(paddle.shape(scores)).astype("bool")


def nms_detections(logits, boxes, orig_sizes, num_select, nms_iou, pre_nms_topk):
    """top_detections' inputs -> (bbox [N, 6], bbox_num int32 [B]): the top pre_nms_topk pairs of each image,
    class-wise NMS at nms_iou, at most num_select kept, best first; PostProcess with NMS, batched.
    Classes are kept apart as PostProcess's batched_nms does: boxes shifted by label * (extent of the image's
    boxes + 1), the same arithmetic, so the same decisions. In float32 a large shift (high label, large image)
    rounds boxes under ~0.01 px wide to zero width, which NMS then cannot compare (torchvision's batched_nms
    has the same limit)."""
    bbox = top_detections(logits, boxes, orig_sizes, pre_nms_topk)[0].reshape([len(logits), -1, 6])
    label, score, xyxy = bbox[..., 0], bbox[..., 1], bbox[..., 2:]
    span = xyxy.amax((1, 2)) - xyxy.amin((1, 2)) + 1  # [B]
    keep = nms_keep(xyxy + (label * span[:, None])[..., None], score, nms_iou, num_select)  # [B, K]
    return paddle.gather_nd(bbox, paddle.nonzero(keep)), keep.astype("int32").sum(1, dtype="int32")


class DeployModel(nn.Layer):
    """See the module docstring. `model`: a DACDETR in eval mode (its deformable attention on the reference
    path for export); the rest: model.postprocess's keys (common/model_args.postprocess_args)."""

    def __init__(self, model, num_select, nms_iou=None, pre_nms_topk=10000):
        super().__init__()
        self.model = model
        self.num_select = num_select
        self.nms_iou = nms_iou
        self.pre_nms_topk = pre_nms_topk

    def forward(self, image, im_shape, scale_factor):
        out = self.model(image, padding_mask(image, im_shape))
        orig_sizes = paddle.floor(im_shape / scale_factor + 0.5)
        if self.nms_iou is None:
            return top_detections(out["pred_logits"], out["pred_boxes"], orig_sizes, self.num_select)
        return nms_detections(out["pred_logits"], out["pred_boxes"], orig_sizes, self.num_select, self.nms_iou,
                              self.pre_nms_topk)
