"""Every config key vpose_d2 adds to Detectron2's, with paper defaults.

Defaults follow the papers (PETR, PAVE-Net); where their public releases differ, the release
value is noted beside the key. ``add_vpose_config`` is idempotent.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_vpose_config", "get_vpose_cfg"]


def add_vpose_config(cfg: CN) -> None:
    """Add vpose_d2's keys to a Detectron2 config in place (idempotent)."""
    if "VPOSE" in cfg.MODEL:
        return
    _add_data_config(cfg)
    _add_model_config(cfg)
    _add_pave_config(cfg)
    _add_vepe_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_checkpoint_config(cfg)
    _add_tracker_config(cfg)


# ------------------------------------------------------------------------------------------
# Data: clips, augmentation, datasets
# ------------------------------------------------------------------------------------------
def _add_data_config(cfg: CN) -> None:
    cfg.INPUT.CLIP = CN()
    # Frame offsets of the neighbours around the key frame (the key frame, offset 0, is added
    # by the mapper). PAVE-Net's temporal span 1 is [-1, 1]; span 2 is [-2, -1, 1, 2].
    cfg.INPUT.CLIP.OFFSETS = [-1, 1]
    # Train on every frame with labels as key frame (PoseTrack labels every 4th val frame).
    cfg.INPUT.CLIP.LABELED_ONLY = True
    # Horizontal flip probability (the flip map comes from dataset metadata).
    cfg.INPUT.CLIP.FLIP_PROB = 0.5
    # Photometric augmentation (brightness/contrast/saturation ranges, 0 disables).
    cfg.INPUT.CLIP.PHOTOMETRIC = 0.0
    # Pseudo-video for image datasets (COCO): neighbours are the same image rotated by
    # +/- n degrees with n ~ U{0..MAX_ROTATION} (PAVE-Net's COCO pretraining).
    cfg.INPUT.CLIP.PSEUDO_VIDEO_MAX_ROTATION = 5
    # Turn one-frame videos (COCO) into such pseudo-videos in training (else: T copies).
    cfg.INPUT.CLIP.PSEUDO_VIDEO = True
    # Synthetic PoseTrack set (tools/make_synthetic_posetrack.py): where it lives.
    cfg.DATASETS.SYNTHETIC_ROOT = "datasets/synthetic_posetrack"


# ------------------------------------------------------------------------------------------
# Image pose transformer (PETR-style): shared by every meta-architecture
# ------------------------------------------------------------------------------------------
def _add_model_config(cfg: CN) -> None:
    cfg.MODEL.VPOSE = CN()
    _C = cfg.MODEL.VPOSE
    # Number of joints; 0 means read it from the first training dataset's metadata.
    _C.NUM_KEYPOINTS = 0
    _C.HIDDEN_DIM = 256
    _C.NHEADS = 8
    _C.NUM_FEATURE_LEVELS = 4
    _C.DIM_FEEDFORWARD = 1024
    _C.DROPOUT = 0.1
    # Deformable encoder.
    _C.ENC_LAYERS = 6
    _C.ENC_N_POINTS = 4
    # Pose decoder (queries = top-N proposals from encoder tokens).
    _C.NUM_QUERIES = 300
    _C.DEC_LAYERS = 3
    # Joint decoder (K joint queries per person). Paper 3, release 2.
    _C.JOINT_DEC_LAYERS = 3
    _C.JOINT_DEC_N_POINTS = 4
    # Persons refined by the joint decoder at test time (matched positives in training).
    _C.NUM_JOINT_PERSONS_TEST = 20
    # "auto" (compiled kernel where built for the tensor's device), "compiled", "reference".
    _C.ATTN_IMPL = "auto"
    # GroupNorm groups of the neck's 1x1 / 3x3 projections (reference: 32).
    _C.NECK_NUM_GROUPS = 32
    # Per-layer (per-frame) pose refinement MLP: PAVE 256 -> 512 -> 512 -> 512 -> 2K.
    _C.REFINE_HIDDEN_DIM = 512
    _C.REFINE_NUM_LAYERS = 4
    # Initial foreground probability of every class head (focal-loss prior).
    _C.PRIOR_PROB = 0.01
    # Per-joint OKS sigmas for the matcher / OKS loss; empty: the training dataset's
    # metadata ``keypoint_oks_sigmas`` (then the PoseTrack/COCO layout of the same K).
    _C.OKS_SIGMAS = []

    _C.MATCHER = CN()
    _C.MATCHER.COST_CLASS = 2.0
    _C.MATCHER.COST_KEYPOINT = 70.0
    _C.MATCHER.COST_OKS = 7.0

    _C.LOSS = CN()
    _C.LOSS.FOCAL_ALPHA = 0.25
    _C.LOSS.FOCAL_GAMMA = 2.0
    _C.LOSS.CLASS_WEIGHT = 0.5
    # "rle" (paper) or "l1_oks" (PETR without RLE).
    _C.LOSS.KEYPOINT_LOSS = "rle"
    _C.LOSS.RLE_WEIGHT = 1.0
    _C.LOSS.POSE_L1_WEIGHT = 70.0
    _C.LOSS.POSE_OKS_WEIGHT = 2.0
    _C.LOSS.JOINT_L1_WEIGHT = 80.0
    _C.LOSS.JOINT_OKS_WEIGHT = 3.0
    # Auxiliary K-way keypoint heatmap on the key frame's finest encoder level (stride 8),
    # penalty-reduced focal loss against Gaussian targets, training only. PETR's release
    # trains one (weight 2-4); the papers do not mention it, so 0 (off) by default. From random
    # weights it is what makes learning fast: configs/quick/ turn it on.
    _C.LOSS.HEATMAP_WEIGHT = 0.0
    # Standard deviation of the Gaussian targets, in cells of the finest level.
    _C.LOSS.HEATMAP_SIGMA = 1.0

    # Backbone adapters (build_resnet_pose_backbone, build_timm_pose_backbone).
    cfg.MODEL.TIMM = CN()
    # timm model name for build_timm_pose_backbone, e.g. "swin_large_patch4_window12_384",
    # "hrnet_w48".
    cfg.MODEL.TIMM.NAME = "swin_large_patch4_window12_384"
    # Indices of the timm feature maps used as C3-C5.
    cfg.MODEL.TIMM.OUT_INDICES = [1, 2, 3]
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.3
    # A local ImageNet checkpoint of the plain timm model (e.g. the official Swin-L or
    # HRNet-W48 weights), loaded by timm itself with its key remapping; "" starts from random
    # weights. MODEL.WEIGHTS (a Detectron2 checkpoint of the whole model) is loaded after it.
    cfg.MODEL.TIMM.PRETRAINED_FILE = ""
    # Freeze the first N stages of the timm model (0 freezes nothing).
    cfg.MODEL.TIMM.FREEZE_AT = 0
    # Inputs are padded to a multiple of this (Swin-L at window 12 likes 32 * 12 = 384;
    # timm pads windows itself, so 32 is enough).
    cfg.MODEL.TIMM.SIZE_DIVISIBILITY = 32
    # timm's ``feature_location`` for models that have one (HRNet): "" returns the raw branch
    # outputs (HRNet-W48: 96/192/384 ch at strides 8/16/32, as PETR uses them), "incre" timm's
    # widened ones (256/512/1024). Left out of create_model when empty for other models.
    cfg.MODEL.TIMM.FEATURE_LOCATION = ""


# ------------------------------------------------------------------------------------------
# PAVE-Net
# ------------------------------------------------------------------------------------------
def _add_pave_config(cfg: CN) -> None:
    cfg.MODEL.PAVE = CN()
    _C = cfg.MODEL.PAVE
    # Spatiotemporal pose decoder on (False: the image-only ablation, poses regressed
    # directly from key-frame tokens).
    _C.USE_STPD = True
    # Spatiotemporal joint decoder on.
    _C.USE_STJD = True
    # "pose_aware" (key-frame proposals as references) or "random" (learned references,
    # the paper's Table 5 ablation).
    _C.REFERENCE = "pose_aware"
    # Video transformer baseline (section 3.1): the encoder attends across all frames.
    _C.SPATIOTEMPORAL_ENCODER = False
    # Only the key frame is supervised ("neighbour poses learn through attention"): keep the
    # gradient of the neighbour frames' refined poses into the next decoder layer's (and the
    # joint decoder's) sampling locations; the key frame's reference is detached as in DETR.
    # False detaches every frame, and the neighbours' refinement MLPs then never learn.
    _C.NEIGHBOUR_REFERENCE_GRAD = True


# ------------------------------------------------------------------------------------------
# VEPE (the VEPE paper). The spatial phase is the image model's (MODEL.VPOSE keys, the same
# parameter names, so an ImagePoseTransformer checkpoint loads as it is); these keys are the
# temporal phase's. "Paper silent" marks the choices the paper leaves open.
# ------------------------------------------------------------------------------------------
def _add_vepe_config(cfg: CN) -> None:
    cfg.MODEL.VEPE = CN()
    _C = cfg.MODEL.VEPE
    # Table 2's switches (all off: the baseline row, the image model run on the key frame).
    # STPE: key-frame pose queries attend to themselves, then to the other frames' selected
    # pose queries (section 3.3).
    _C.USE_STPE = True
    # Instance consistency mechanism (section 3.6): instance queries give every selected pose
    # query an embedding; their similarity masks STPE's cross-frame attention and the triplet
    # loss (eq. 5) trains them. Needs USE_STPE (the mask is STPE's). The embeddings of the key
    # frame's persons are returned as `pred_instance_embeds`.
    _C.USE_ICM = True
    # STDME: the key frame's memory, in-frame deformable self-attention then temporal
    # multi-scale deformable attention over all T*L maps (section 3.4, eq. 1).
    _C.USE_STDME = True
    # STPD: a new pose decoder (eqs. 2-4) on STDME's memory from the STPE queries. Paper silent
    # on what decodes the rows of Table 2 without it (rows a-c still output refined poses, and
    # row c's STDME memory must be read by something): the spatial phase's own pose decoder
    # (its weights, `pose_decoder`) then decodes the same inputs.
    _C.USE_STPD = True
    # STPD layers (paper: 3).
    _C.STPD_LAYERS = 3

    # Pose query selection: per frame keep the spatial stage's pose queries whose score (the
    # last spatial decoder layer's) is at least this (Table 3: 0.3 best; 0 keeps every query).
    _C.PQS_THRESHOLD = 0.3
    # Paper silent on how the variable selection is batched: each frame keeps its top
    # PQS_NUM_QUERIES queries by score, those under the threshold marked invalid (left out of
    # every attention, never matched, score 0 at test). 0 keeps the top NUM_QUERIES, so no
    # query above the threshold is ever dropped.
    _C.PQS_NUM_QUERIES = 0

    # Instance queries. Paper silent on the embedding size: 128, a usual size of appearance
    # embeddings for association (the instance queries themselves have HIDDEN_DIM channels,
    # as the paper says).
    _C.INSTANCE_EMBED_DIM = 128
    # Paper silent on depth: one layer (self-attention among the frame's selected instance
    # queries, pose-aware deformable attention at the pose's keypoints, FFN).
    _C.INSTANCE_LAYERS = 1
    # Paper silent on how many instances of each other frame a key query may see: "the most
    # matched target for each instance in every frame", so 1.
    _C.INSTANCE_MASK_TOPK = 1
    # Paper silent on the embedding head. "BN": a BatchNorm1d over the selected queries (the
    # "BNNeck" of person re-identification) between the linear head and the L2 normalization;
    # "": none. Without it the quick synthetic runs collapsed: after 600 iterations every
    # embedding had cosine 0.999 with every other, the triplet loss sat at its margin (no
    # gradient at a collapse) and the STPE instance mask was arbitrary. BN standardises each
    # channel across the queries, so no component common to all of them can dominate.
    _C.INSTANCE_HEAD_NORM = "BN"

    # STPE / STDME depth. Paper silent: Fig. 3 draws one block of each, so 1.
    _C.STPE_LAYERS = 1
    _C.STDME_LAYERS = 1
    # STDME sampling points per head, level and frame (K of eq. 1). Paper silent: the spatial
    # encoder's 4 (Deformable DETR's).
    _C.STDME_N_POINTS = 4

    # Instance consistency loss (eq. 5): triplets over the Hungarian-matched selected queries of
    # every labeled frame of a clip, cosine distance 1 - cos. Paper silent on the margin, the
    # mining and the weight: margin 0.3 (distances live in [0, 2]); "hard" takes per anchor its
    # farthest positive (same track id, another frame) and nearest negative (another track id,
    # any frame), "all" every (positive, negative) pair; the mean over triplets, weight 1.0.
    _C.ICL_MARGIN = 0.3
    _C.ICL_MINING = "hard"
    _C.ICL_WEIGHT = 1.0

    # Freeze the spatial phase (backbone, level embeddings, spatial encoder, proposals, spatial
    # pose decoder, auxiliary heatmap head) when starting from a trained image model: it runs
    # in eval mode without gradients and its losses are skipped; the temporal modules and
    # PETR's joint decoder (which refines the final poses) train. The paper trains the
    # spatial phase first, then "20 epochs of temporal phase training".
    _C.FREEZE_SPATIAL = False


# ------------------------------------------------------------------------------------------
# Solver
# ------------------------------------------------------------------------------------------
def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    # lr multipliers of the public releases: backbone, sampling offsets, reference points.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1
    # Parameter-name prefixes that get BACKBONE_MULTIPLIER: the pretrained trunk only. The
    # neck (backbone.input_proj / extra_proj) is new, and PETR's release trains it at the base
    # lr (its neck is not part of its backbone); ["backbone."] would slow the neck down too.
    cfg.SOLVER.BACKBONE_MULTIPLIER_PREFIXES = ["backbone.bottom_up."]
    # LINEAR_PROJ_MULTIPLIER applies to parameters whose name contains any of these.
    cfg.SOLVER.LINEAR_PROJ_NAMES = ["sampling_offsets", "reference_points"]
    # Full-model L2 gradient clipping (Detectron2's CLIP_TYPE is per-parameter only).
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    # Norm layers: Detectron2's default (0.0) exempts them; PETR's release decays every
    # parameter, so follow it. Biases follow WEIGHT_DECAY (Detectron2's WEIGHT_DECAY_BIAS=None).
    cfg.SOLVER.WEIGHT_DECAY_NORM = 1e-4
    # Mixed precision: SOLVER.AMP.ENABLED is Detectron2's; the precision is ours: "bf16"
    # (autocast to bfloat16, no loss scaling; works on CPU) or "fp16" (autocast to float16
    # with a GradScaler).
    cfg.SOLVER.AMP.PRECISION = "bf16"
    # DistributedDataParallel(find_unused_parameters=...): turn on for ablations that leave
    # parameters without gradient (e.g. MODEL.PAVE.USE_STJD False with its weights built).
    cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS = False
    # MODEL.WEIGHTS whose tensor shapes differ from the model's raise an error naming the
    # first mismatched key (Detectron2 would skip them with a warning). Set False to fine-tune
    # from a checkpoint with another head size (e.g. COCO 17 joints -> PoseTrack 15): the
    # mismatched tensors are then left at their initialization, with a warning.
    cfg.MODEL.WEIGHTS_STRICT_SHAPES = True


# ------------------------------------------------------------------------------------------
# Test
# ------------------------------------------------------------------------------------------
def _add_test_config(cfg: CN) -> None:
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    # Also report COCO-style OKS AP (pycocotools) beside the PoseTrack table.
    cfg.TEST.COCO_OKS_AP = True
    # Also score tracking (MOTA, MOTP, precision, recall) with the ids of the MODEL.TRACKER
    # tracker (MODEL.TRACKER.NAME "none": the model's own pred_track_ids).
    cfg.TEST.POSETRACK_TRACKING = True


# ------------------------------------------------------------------------------------------
# Tracking (vpose_d2.tracking): the per-video tracker the evaluator (and the predictor) runs
# ------------------------------------------------------------------------------------------
def _add_tracker_config(cfg: CN) -> None:
    cfg.MODEL.TRACKER = CN()
    _C = cfg.MODEL.TRACKER
    # "auto": the EmbeddingTracker when the model's outputs carry pred_instance_embeds (VEPE),
    # else the PoseTracker (image model, PAVE-Net); or a TRACKER_REGISTRY name
    # ("EmbeddingTracker", "PoseTracker"); "none": no tracker (the evaluator keeps the ids the
    # model itself outputs, if any).
    _C.NAME = "auto"
    # Persons scoring below this are not tracked (track id -1): they neither start nor
    # continue a track, and the tracking evaluation (MOTA) leaves them out (MOTA has no score:
    # every low-score duplicate would be a false positive). The AP table keeps every person.
    # 0.3 is the demo's default --confidence-threshold.
    _C.MIN_SCORE = 0.3
    # A track ends after this many frames in a row without a match; until then a person can
    # continue it. Frames as the tracker sees them: the labeled frames in evaluation
    # (PoseTrack val: every 4th), every frame in the predictor.
    _C.MAX_AGE = 3
    # PoseTracker: the least OKS (tracks' last poses as reference) of a match; a person less
    # similar to every live track starts a new one. OKS 0.02 is a joint displacement of about
    # a quarter of the person's height. On ground-truth poses of synthetic val sets (4 frames
    # between labeled frames) the true pairs' OKS went down to 0.024 (a 30-px person walking
    # 9 px per labeled frame); 0.1 split such tracks (MOTA 98.4 vs 100).
    _C.OKS_THRESH = 0.02
    # PoseTracker: also compare each track's last pose moved on by its last velocity (of the
    # pose's centre, per frame) and keep the better OKS, so people who walk far between
    # processed frames keep their track, and those who stop or turn do too.
    _C.POSE_MOTION = True
    # EmbeddingTracker: the least cosine similarity of a match.
    _C.EMBED_SIM_THRESH = 0.5
    # EmbeddingTracker: a track's embedding is the moving average m <- normalize(M * m +
    # (1 - M) * e) of its person's embeddings; 0 keeps the last one.
    _C.EMBED_MOMENTUM = 0.5


# ------------------------------------------------------------------------------------------
# Checkpoints (vpose_d2/engine/checkpoint.py)
# ------------------------------------------------------------------------------------------
def _add_checkpoint_config(cfg: CN) -> None:
    # Checkpoints record the clip layout their weights assume (meta-architecture, frame
    # offsets and key position; also the joint count, which MODEL.WEIGHTS_STRICT_SHAPES
    # governs). Loading one whose record differs from the model (e.g. trained with
    # INPUT.CLIP.OFFSETS [-1, 1], loaded with [-2, -1]: same tensor shapes, other meaning)
    # raises, naming the config key. Set False to load such weights anyway, e.g. to initialize
    # a model from weights of another layout (with a warning).
    cfg.MODEL.WEIGHTS_CHECK_LAYOUT = True


def get_vpose_cfg() -> CN:
    """Detectron2's default config with vpose_d2's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_vpose_config(cfg)
    return cfg
