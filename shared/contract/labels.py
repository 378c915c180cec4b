"""Label sets, in the order every head, checkpoint and API response uses."""

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
MODALITIES: tuple[str, ...] = ("text", "audio", "visual")
