"""MoodreelModel: three modality encoders, late fusion, emotion and sentiment heads.

Each modality (order ``shared.contract.labels.MODALITIES``: text, audio, visual) becomes one embedding of
``embed_dim``. A modality that is absent from the input, hidden by modality dropout, or whose
encoder this checkpoint never trained is replaced by a learned "absent" embedding, so the fusion
layers see "no audio" as its own signal instead of zero features that look like silence. Fusion
concatenates the three embeddings and runs dense layers into the two heads; each modality also
has its own small heads, so a prediction can show what every modality on its own suggests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from services.model.core.config import ModelConfig
from services.model.core.gate import FusionGate, gated_logits
from services.model.core.parts import LEARNING_RATES, part_of
from shared.contract.bundle import FeatureBundle
from shared.contract.features.spec import resolve_pretrained
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BT601_LUMA = (0.299, 0.587, 0.114)
TEXT, AUDIO, VISUAL = (MODALITIES.index(m) for m in ("text", "audio", "visual"))


@dataclass
class ModelInputs:
    """A batch. A modality whose tensors are None counts as absent for every row."""

    modality_mask: torch.Tensor  # [B, 3] bool
    input_ids: torch.Tensor | None = None  # [B, L] int64
    attention_mask: torch.Tensor | None = None  # [B, L] int64
    token_type_ids: torch.Tensor | None = None  # [B, L] int64, 1 on the context segment
    log_mel: torch.Tensor | None = None  # [B, M, T]
    audio_mask: torch.Tensor | None = None  # [B, T] bool
    frames: torch.Tensor | None = None  # [B, N, 3, S, S] uint8 RGB
    # Training cache: hidden states after the text encoder's frozen layers ([B, L, H]).
    text_hidden: torch.Tensor | None = None
    # Training cache: a frozen speech encoder's per-layer statistics ([B, layers + 1, 2D]).
    audio_states: torch.Tensor | None = None
    # Training cache: a frozen visual encoder's embedding of the frames ([B, embed_dim]).
    visual_embedding: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> ModelInputs:
        moved = {
            f.name: (value.to(device, non_blocking=True) if value is not None else None)
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        return ModelInputs(**moved)

    def __len__(self) -> int:
        return self.modality_mask.shape[0]


@dataclass
class ModelOutput:
    emotion_logits: torch.Tensor  # [B, 7]
    sentiment_logits: torch.Tensor  # [B, 3]
    modality_emotion_logits: torch.Tensor  # [B, 3, 7], zeros where the modality was not used
    modality_sentiment_logits: torch.Tensor  # [B, 3, 3], zeros where the modality was not used
    modalities_used: torch.Tensor  # [B, 3] bool: present in the input AND trained
    # [B, K] the audio embedding's speech head (config.speech_labels), zeros where audio was not used
    speech_logits: torch.Tensor | None = None


def inputs_from_bundle(bundle: FeatureBundle, device: torch.device | str = "cpu") -> ModelInputs:
    """Every tensor of a feature bundle as a model batch (one row per utterance)."""

    def tensor(name: str) -> torch.Tensor:
        # torch.tensor copies: bundle arrays may be read-only views of the received bytes.
        return torch.tensor(getattr(bundle, name), device=device)

    return ModelInputs(
        modality_mask=tensor("modality_mask").bool(),
        input_ids=tensor("input_ids"),
        attention_mask=tensor("attention_mask"),
        token_type_ids=tensor("token_type_ids"),
        log_mel=tensor("log_mel"),
        audio_mask=tensor("audio_mask").bool(),
        frames=tensor("frames"),
    )


def _transformers_model(name: str | None, inline_config: dict | None) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    if inline_config is not None:
        config = dict(inline_config)
        return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    # local_files_only: loading a checkpoint must never reach the network.
    # float32 whatever the files hold: transformers 5 would keep a half-precision copy half, and
    # training mixes precision only under autocast.
    return AutoModel.from_pretrained(resolve_pretrained(name), local_files_only=True, dtype=torch.float32)


class TextEncoder(nn.Module):
    """A transformers encoder, mean-pooled over the utterance's tokens, projected to embed_dim."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        backbone = _transformers_model(config.text_encoder, config.text_encoder_config)
        self.hidden_size = backbone.config.hidden_size
        self.uses_token_types = getattr(backbone.config, "type_vocab_size", 0) > 1
        self.layer_count = backbone.config.num_hidden_layers
        self.frozen_depth = 0
        mode = config.text_train_mode
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(
                backbone, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.1)
            )
        elif mode in ("frozen", "top_layers"):
            backbone.requires_grad_(False)
            self.frozen_depth = self.layer_count
            if mode == "top_layers":
                trained = min(config.text_train_layers, self.layer_count)
                self.frozen_depth = self.layer_count - trained
                for layer in self._layers(backbone)[self.frozen_depth :]:
                    layer.requires_grad_(True)
        self.backbone = backbone
        self.project = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(self.hidden_size, config.embed_dim), nn.GELU()
        )

    @staticmethod
    def _layers(backbone: nn.Module) -> nn.ModuleList:
        encoder = getattr(backbone, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"text_train_mode='top_layers' needs an encoder with .encoder.layer "
                f"({type(backbone).__name__} has none); use 'lora' or 'full'"
            )
        return layers

    def _backbone_kwargs(self, input_ids, attention_mask, token_type_ids) -> dict:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return kwargs

    @torch.no_grad()
    def frozen_hidden(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        """Hidden states after the frozen layers: constant during training, so they can be cached."""
        out = self.backbone(
            **self._backbone_kwargs(input_ids, attention_mask, token_type_ids), output_hidden_states=True
        )
        return out.hidden_states[self.frozen_depth]

    def _run_trained_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        extra = {}
        encoder = getattr(self.backbone, "encoder", None)
        if hasattr(encoder, "compute_position_bias"):
            # MPNet's encoder adds one relative-position bias, shared by all layers, to each
            # layer's attention scores; a layer run on its own must get it too.
            extra["position_bias"] = encoder.compute_position_bias(hidden)
        for layer in self._layers(self.backbone)[self.frozen_depth :]:
            hidden = layer(hidden, mask, **extra)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden

    def forward(self, input_ids, attention_mask, token_type_ids, hidden=None) -> torch.Tensor:
        if hidden is not None:
            hidden = self._run_trained_layers(hidden.to(self.project[1].weight.dtype), attention_mask)
        else:
            kwargs = self._backbone_kwargs(input_ids, attention_mask, token_type_ids)
            hidden = self.backbone(**kwargs).last_hidden_state
        pool_mask = attention_mask.bool()
        if self.config.text_pool_target_only and token_type_ids is not None:
            pool_mask = pool_mask & (token_type_ids == 0)
        weights = pool_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.project(pooled)


def _masked_mean_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` features and a ``[B, 1, T]`` 0/1 mask -> ``[B, 2C]``: mean and max over the
    masked steps (zeros for a row with none)."""
    valid = mask.sum(-1).clamp(min=1.0)
    mean_pool = (x * mask).sum(-1) / valid
    max_pool = x.masked_fill(mask == 0, torch.finfo(x.dtype).min).amax(-1)
    max_pool = torch.where(mask.sum(-1) > 0, max_pool, torch.zeros_like(max_pool))
    return torch.cat([mean_pool, max_pool], dim=-1)


class SpeechTransformerBackbone(nn.Module):
    """A pretrained speech encoder over Whisper-style log-mels (Whisper's encoder family).

    The log-mel is padded to the encoder's fixed input length with the utterance's own floor level
    (Whisper's silence: 8 decades below the peak), not with the zeros that mark padding in a bundle,
    which would read as sound to a model pretrained on Whisper's scale.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        model = _transformers_model(config.audio_encoder, config.audio_encoder_config)
        # Encoder-decoder speech models (Whisper): only the encoder is kept.
        self.encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
        encoder_config = self.encoder.config
        self.mel_bins = encoder_config.num_mel_bins
        if config.audio_input_frames:
            self._shorten_window(config.audio_input_frames // 2)
        self.input_frames = 2 * encoder_config.max_source_positions
        self.features = encoder_config.d_model
        self.hidden_count = encoder_config.encoder_layers + 1
        if not config.audio_train_backbone:
            self.encoder.requires_grad_(False)

    def _shorten_window(self, positions: int) -> None:
        """Keep the first ``positions`` rows of the position table: the encoder then reads
        ``2 * positions`` frames (its convolutions halve the time axis)."""
        table = self.encoder.embed_positions
        if positions > table.num_embeddings:
            raise ValueError(
                f"the speech encoder has {table.num_embeddings} positions, {positions} asked for"
            )
        shorter = nn.Embedding(positions, table.embedding_dim)
        shorter.weight.data.copy_(table.weight.data[:positions])
        shorter.requires_grad_(table.weight.requires_grad)
        self.encoder.embed_positions = shorter
        self.encoder.config.max_source_positions = positions

    def _prepare(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != self.mel_bins:
            raise ValueError(
                f"the speech encoder reads {self.mel_bins} mel bins, the features have {x.shape[1]}: "
                f"set the FeatureSpec's n_mels to {self.mel_bins}"
            )
        padding = self.input_frames - min(x.shape[-1], self.input_frames)
        x = F.pad(x[..., : self.input_frames], (0, padding))
        mask = F.pad(mask[:, : self.input_frames].float(), (0, padding)) > 0.5  # [B, L]
        peak = x.masked_fill(~mask[:, None, :], float("-inf")).amax((1, 2), keepdim=True)
        # Whisper's floor: 8 decades (2.0 on this scale) below the peak, never below -1.5, its value
        # for digital silence (log10 of its 1e-10 clamp, then (x + 4) / 4).
        floor = torch.where(torch.isfinite(peak), peak - 2.0, torch.full_like(peak, -1.5)).clamp(min=-1.5)
        return torch.where(mask[:, None, :], x, floor), mask

    def layer_statistics(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, M, T]`` log-mel and ``[B, T]`` mask -> ``[B, layers + 1, 2D]``: mean and standard
        deviation of every hidden state over the utterance's real frames (zeros for none)."""
        x, mask = self._prepare(x, mask)
        hidden = self.encoder(input_features=x, output_hidden_states=True).hidden_states
        states = torch.stack(hidden, dim=1)  # [B, H, L/2, D]
        frames = F.max_pool1d(mask[:, None, :].float(), 2, 2)[:, 0, : states.shape[2]]  # [B, L/2]
        weights = frames[:, None, :, None].to(states.dtype)
        count = weights.sum(2).clamp(min=1.0)
        mean = (states * weights).sum(2) / count
        variance = (((states - mean[:, :, None]) ** 2) * weights).sum(2) / count
        return torch.cat([mean, (variance + 1e-6).sqrt() * (frames.sum(1) > 0)[:, None, None]], dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, M, T]`` log-mel and ``[B, T]`` mask -> ``[B, D, T']`` states and ``[B, 1, T']`` mask."""
        x, mask = self._prepare(x, mask)
        states = self.encoder(input_features=x).last_hidden_state.transpose(1, 2)  # [B, D, L/2]
        pooled_mask = F.max_pool1d(mask[:, None, :].float(), 2, 2)[..., : states.shape[-1]]
        return states, pooled_mask.to(states.dtype)


class AudioEncoder(nn.Module):
    """2-D CNN over the log-mel image (padded frames are excluded from normalisation and pooling),
    or a pretrained speech encoder (``SpeechTransformerBackbone``); mean+max pooled, projected."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.backbone = SpeechTransformerBackbone(config) if config.audio_backbone == "transformers" else None
        self.layer_stats = self.backbone is not None and config.audio_pooling == "layer_stats"
        if self.backbone is not None:
            if self.layer_stats:
                # Softmax over these: equal weights at the start, learned with the heads.
                self.layer_logits = nn.Parameter(torch.zeros(self.backbone.hidden_count))
                # Whisper's states sit on large per-channel offsets that bury what varies between
                # utterances: each pooled statistic is standardised with the training set's mean and
                # deviation (set once by training, stored in the checkpoint; never per utterance,
                # so an utterance's level still shows).
                shape = (self.backbone.hidden_count, 2 * self.backbone.features)
                self.register_buffer("states_mean", torch.zeros(shape))
                self.register_buffer("states_std", torch.ones(shape))
            self.project = nn.Sequential(
                nn.Dropout(config.dropout), nn.Linear(2 * self.backbone.features, config.embed_dim), nn.GELU()
            )
            return
        layers: list[nn.Module] = []
        in_channels = 1
        for channels in config.audio_channels:
            for stride in [1] * config.audio_convs_per_stage + [2]:
                layers += [
                    nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1),
                    nn.GroupNorm(min(8, channels), channels),
                    nn.GELU(),
                ]
                in_channels = channels
        self.conv = nn.Sequential(*layers)
        self.normalize_per_bin = config.audio_normalization == "per_bin"
        self.stride = 2 ** len(config.audio_channels)
        self.frequency_bands = config.audio_frequency_bands
        features = in_channels * self.frequency_bands
        self.project = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(2 * features, config.embed_dim), nn.GELU()
        )

    @property
    def caches_states(self) -> bool:
        """True when the encoder's output is constant (frozen, pooled per layer): cacheable."""
        return self.layer_stats and not any(p.requires_grad for p in self.backbone.parameters())

    @torch.no_grad()
    def fit_standardisation(self, states: torch.Tensor) -> None:
        """Set the per-layer standardisation from training rows' statistics ``[N, layers + 1, 2D]``."""
        states = states.float()
        self.states_mean.copy_(states.mean(0))
        self.states_std.copy_(states.std(0).clamp(min=1e-4))

    def layer_statistics(self, log_mel: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone.layer_statistics(
            log_mel.float().to(self.project[1].weight.dtype), audio_mask.bool()
        )

    def forward(
        self,
        log_mel: torch.Tensor | None,
        audio_mask: torch.Tensor | None,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.layer_stats:
            if states is None:
                states = self.layer_statistics(log_mel, audio_mask)
            dtype = self.project[1].weight.dtype
            standard = (states.to(dtype) - self.states_mean) / self.states_std
            weights = torch.softmax(self.layer_logits, dim=0).to(dtype)
            return self.project((standard * weights[None, :, None]).sum(1))
        x = log_mel.float()
        mask = audio_mask.bool()
        if self.backbone is not None:
            states, pooled_mask = self.backbone(x.to(self.project[1].weight.dtype), mask)
            return self.project(_masked_mean_max(states, pooled_mask))
        frame_weights = mask[:, None, :].float()  # [B, 1, T]
        axes = (2,) if self.normalize_per_bin else (1, 2)
        bins = 1 if self.normalize_per_bin else x.shape[1]
        count = (frame_weights.sum(-1, keepdim=True) * bins).clamp(min=1.0)
        mean = (x * frame_weights).sum(axes, keepdim=True) / count
        var = (((x - mean) ** 2) * frame_weights).sum(axes, keepdim=True) / count
        x = (x - mean) / (var.sqrt() + 1e-5) * frame_weights
        x = self.conv(x.unsqueeze(1).to(self.project[1].weight.dtype))  # [B, C, F', T']
        if self.frequency_bands == 1:
            x = x.mean(2)  # [B, C, T']
        else:
            x = F.adaptive_avg_pool2d(x, (self.frequency_bands, x.shape[-1])).flatten(1, 2)
        pooled_mask = F.max_pool1d(mask[:, None, :].float(), self.stride, self.stride, ceil_mode=True)[
            :, :, : x.shape[-1]
        ]  # [B, 1, T']
        return self.project(_masked_mean_max(x, pooled_mask))


class VisualEncoder(nn.Module):
    """A per-frame image backbone (small CNN or a transformers model), then temporal pooling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(BT601_LUMA).view(1, 3, 1, 1), persistent=False)
        self.is_transformers = config.visual_backbone == "transformers"
        self.is_face = config.visual_backbone == "face_cnn"
        self.flip_average = config.visual_flip_average
        if self.is_transformers:
            self.backbone = _transformers_model(config.visual_encoder, config.visual_encoder_config)
            backbone_config = self.backbone.config
            sizes = getattr(backbone_config, "hidden_sizes", None)
            features = sizes[-1] if sizes else backbone_config.hidden_size
            if not config.visual_train_backbone:
                self.backbone.requires_grad_(False)
        elif config.visual_backbone == "face_cnn":
            layers = []
            in_channels = 1
            for channels in config.visual_channels:
                for _ in range(config.visual_convs_per_stage):
                    layers += [
                        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                        nn.BatchNorm2d(channels),
                        nn.ReLU(inplace=True),
                    ]
                    in_channels = channels
                layers.append(nn.MaxPool2d(2))
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            self.backbone = nn.Sequential(*layers)
            features = in_channels
        else:
            layers: list[nn.Module] = []
            in_channels = 3
            for channels in config.visual_channels:
                layers += [
                    nn.Conv2d(in_channels, channels, 3, stride=2, padding=1),
                    nn.GroupNorm(min(8, channels), channels),
                    nn.GELU(),
                ]
                in_channels = channels
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            self.backbone = nn.Sequential(*layers)
            features = in_channels
        self.project = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(2 * features, config.embed_dim), nn.GELU()
        )

    def _frame_features(self, images: torch.Tensor) -> torch.Tensor:
        if not self.is_transformers:
            return self.backbone(images)
        out = self.backbone(pixel_values=images)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(1) if hidden.dim() == 3 else hidden.mean((2, 3))
        return pooled.flatten(1)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if not self.is_face:
            return (images - self.mean) / self.std
        # Luma (ITU-R BT.601, as FER2013's grayscale), standardised per face: lighting and camera
        # gain then do not shift what the network reads.
        gray = (images * self.luma).sum(1, keepdim=True)
        mean = gray.mean((2, 3), keepdim=True)
        deviation = gray.std((2, 3), keepdim=True).clamp(min=1e-2)
        return (gray - mean) / deviation

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, count = frames.shape[:2]
        images = frames.flatten(0, 1).float() / 255.0
        images = self._normalise(images).to(self.project[1].weight.dtype)
        per_frame = self._frame_features(images)
        if self.flip_average and not self.training:
            per_frame = (per_frame + self._frame_features(images.flip(-1))) / 2
        per_frame = per_frame.view(batch, count, -1)
        return self.project(torch.cat([per_frame.mean(1), per_frame.amax(1)], dim=-1))


class MoodreelModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.text = TextEncoder(config)
        self.audio = AudioEncoder(config)
        self.visual = VisualEncoder(config)
        dim = config.embed_dim
        self.absent = nn.Parameter(torch.randn(len(MODALITIES), dim) * 0.02)
        self.fusion = nn.Sequential(
            nn.Linear(len(MODALITIES) * dim, config.fusion_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fusion_hidden, config.fusion_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
        )
        self.fusion_adapters = (
            nn.ModuleList(nn.Linear(dim, config.fusion_hidden, bias=False) for _ in MODALITIES)
            if config.fusion_adapters
            else None
        )
        if self.fusion_adapters is not None:
            for adapter in self.fusion_adapters:
                nn.init.zeros_(adapter.weight)
        self.emotion_head = nn.Linear(config.fusion_hidden, len(EMOTIONS))
        self.sentiment_head = nn.Linear(config.fusion_hidden, len(SENTIMENTS))
        self.modality_emotion_heads = nn.ModuleList(nn.Linear(dim, len(EMOTIONS)) for _ in MODALITIES)
        self.modality_sentiment_heads = nn.ModuleList(nn.Linear(dim, len(SENTIMENTS)) for _ in MODALITIES)
        self.speech_head = nn.Linear(dim, len(config.speech_labels)) if config.speech_labels else None
        self.fusion_gate = (
            FusionGate(
                config.fusion_gate,
                config.fusion_gate_experts,
                config.fusion_gate_joint,
                config.fusion_gate_hidden,
                config.fusion_gate_agreement,
                config.fusion_gate_embedding,
                dim,
                config.fusion_gate_temperature,
            )
            if config.fusion_gate
            else None
        )
        trained = torch.tensor([m in config.trained_modalities for m in MODALITIES])
        self.register_buffer("trained", trained, persistent=False)
        # Calibration temperatures (services.model.core.calibration), row 0 emotion, row 1 sentiment:
        # the fused heads' per combination of modalities used (index: text 1 + audio 2 + visual 4),
        # since a fusion is as sure of itself as the evidence it had; each modality's own heads'.
        # 1 until a checkpoint's fitted calibration is loaded; not in the state dict, since a
        # calibration belongs to exactly the weights it was fitted on (checkpoint.json meta).
        patterns = 2 ** len(MODALITIES)
        self.register_buffer("fused_temperature", torch.ones(2, patterns), persistent=False)
        self.register_buffer("modality_temperature", torch.ones(2, len(MODALITIES)), persistent=False)
        self.register_buffer("pattern_bits", 2 ** torch.arange(len(MODALITIES)), persistent=False)

    def _modalities_to_use(self, inputs: ModelInputs) -> torch.Tensor:
        has_tensors = torch.tensor(
            [
                inputs.input_ids is not None or inputs.text_hidden is not None,
                inputs.log_mel is not None or inputs.audio_states is not None,
                inputs.frames is not None or inputs.visual_embedding is not None,
            ],
            device=inputs.modality_mask.device,
        )
        use = inputs.modality_mask.bool() & has_tensors & self.trained.to(inputs.modality_mask.device)
        if self.training and self.config.modality_dropout > 0:
            dropped = use & (torch.rand(use.shape, device=use.device) < self.config.modality_dropout)
            kept = use & ~dropped
            # Never hide every modality of a row: that row would teach nothing.
            use = torch.where(kept.any(-1, keepdim=True), kept, use)
        return use

    def _encode(self, index: int, inputs: ModelInputs, rows: torch.Tensor) -> torch.Tensor:
        if index == TEXT:
            text_hidden = inputs.text_hidden[rows] if inputs.text_hidden is not None else None
            token_types = inputs.token_type_ids[rows] if inputs.token_type_ids is not None else None
            input_ids = inputs.input_ids[rows] if inputs.input_ids is not None else None
            return self.text(input_ids, inputs.attention_mask[rows], token_types, hidden=text_hidden)
        if index == AUDIO:
            if inputs.audio_states is not None:
                return self.audio(None, None, states=inputs.audio_states[rows])
            return self.audio(inputs.log_mel[rows], inputs.audio_mask[rows])
        if inputs.visual_embedding is not None:
            return inputs.visual_embedding[rows]
        return self.visual(inputs.frames[rows])

    def forward(self, inputs: ModelInputs) -> ModelOutput:
        used = self._modalities_to_use(inputs)
        batch = used.shape[0]
        embeddings = []
        for index in range(len(MODALITIES)):
            embedding = self.absent[index].expand(batch, -1)
            rows = used[:, index].nonzero(as_tuple=True)[0]
            if rows.numel():
                encoded = self._encode(index, inputs, rows).to(embedding.dtype)
                embedding = embedding.index_copy(0, rows, encoded)
            embeddings.append(embedding)
        weights = used.unsqueeze(-1).to(embeddings[0].dtype)
        fused = self._fuse(embeddings, weights)
        modality_emotion = torch.stack(
            [head(e) for head, e in zip(self.modality_emotion_heads, embeddings, strict=True)], dim=1
        )
        modality_sentiment = torch.stack(
            [head(e) for head, e in zip(self.modality_sentiment_heads, embeddings, strict=True)], dim=1
        )
        fused_t = self.fused_temperature[:, (used.long() * self.pattern_bits).sum(-1)]  # [2, B]
        modality_t = self.modality_temperature[:, :, None]  # [2, 3, 1]
        emotion_logits, sentiment_logits = self.emotion_head(fused), self.sentiment_head(fused)
        if self.fusion_gate is not None:
            emotion_logits, sentiment_logits = gated_logits(
                self, embeddings, used, fused, emotion_logits, sentiment_logits
            )
        return ModelOutput(
            emotion_logits=emotion_logits / fused_t[0, :, None],
            sentiment_logits=sentiment_logits / fused_t[1, :, None],
            modality_emotion_logits=modality_emotion * weights / modality_t[0],
            modality_sentiment_logits=modality_sentiment * weights / modality_t[1],
            modalities_used=used,
            speech_logits=(
                self.speech_head(embeddings[AUDIO]) * weights[:, AUDIO]
                if self.speech_head is not None
                else None
            ),
        )

    def _fuse(self, embeddings: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        if self.fusion_adapters is None:
            return self.fusion(torch.cat(embeddings, dim=-1))
        hidden = self.fusion[0](torch.cat(embeddings, dim=-1))
        for index, adapter in enumerate(self.fusion_adapters):
            # Exactly zero for a row without the modality, whatever the adapter learned.
            hidden = hidden + adapter((embeddings[index] - self.absent[index]) * weights[:, index])
        return self.fusion[1:](hidden)

    def base_state_names(self) -> set[str]:
        """State entries that come unchanged from a pretrained base: rebuilt, not stored
        (the parts table, ``services.model.core.parts``, says which parts are a base)."""
        pretrained = {
            "text": self.config.text_is_pretrained,
            "audio": self.config.audio_is_pretrained,
            "visual": self.config.visual_is_pretrained,
        }
        parameters = dict(self.named_parameters())
        names: set[str] = set()
        for name in self.state_dict():
            part = part_of(name)
            if not (part.pretrained_base and pretrained[part.modality]):
                continue
            # A branch this checkpoint never trained is its base, whatever requires_grad says.
            untrained = part.modality not in self.config.trained_modalities
            parameter = parameters.get(name)
            if untrained or parameter is None or not parameter.requires_grad:
                names.add(name)
        return names

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate field (``lr_fusion``, ...) of their part."""
        groups: dict[str, list[nn.Parameter]] = {rate: [] for rate in LEARNING_RATES}
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                groups[part_of(name).learning_rate].append(parameter)
        return groups
