"""The model card's fixed text: the citation, the usage snippet and the Jinja template `atr.model_card` fills in."""

CITATION = """@misc{atr2026robust,
  title         = {Robust Audio-Text Retrieval via Cross-Modal Attention and Hybrid Loss},
  year          = {2026},
  eprint        = {2604.23323},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2604.23323}
}"""

USAGE = '''```python
import soundfile as sf
import soxr
import torch
from transformers import AutoModel, AutoProcessor, pipeline

repo = "{repo_id}"
model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
sampling_rate = processor.feature_extractor.sampling_rate


def load(path):
    """A file as mono float32 at the model's sampling rate (the processor refuses other rates)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), rate, sampling_rate)


files = ["dog.wav", "rain.wav", "siren.wav"]
captions = ["a dog barks twice", "rain falls on a roof", "a siren passes by"]
audio_inputs = processor(audio=[load(f) for f in files], sampling_rate=sampling_rate, return_tensors="pt")
text_inputs = processor(text=captions, return_tensors="pt")
with torch.no_grad():
    audio_embeds = model.get_audio_features(**audio_inputs).pooler_output
    text_embeds = model.get_text_features(**text_inputs).pooler_output
similarity = text_embeds @ audio_embeds.T  # cosine similarities: both embeddings are L2-normalised
for caption, scores in zip(captions, similarity):
    print(f"{{caption!r}} -> {{files[scores.argmax()]}}")

classifier = pipeline("zero-shot-audio-classification", model=repo, trust_remote_code=True)
print(classifier(load("dog.wav"), candidate_labels=["dog barking", "rain", "siren"], hypothesis_template="this is a sound of {{}}"))
```'''

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

An audio-text retrieval model: it embeds audio clips and captions into one {{ projection_dim }}-dimensional space, so
audio can be searched with words, words with audio, and sounds classified zero-shot from class names. It implements
*Robust Audio-Text Retrieval via Cross-Modal Attention and Hybrid Loss* ([arXiv 2604.23323](https://arxiv.org/abs/2604.23323))
with the `atr` package, as a transformers model that loads with `trust_remote_code=True`.
Long recordings are cut into chunks at silences and pooled by attention, so clips of any length get one embedding.

## Usage

Install `torch`, `transformers`, `soundfile` and `soxr`, then rank a few files against captions and classify one:

{{ usage }}

Embed a corpus once with `get_audio_features` and search it with a matrix product (or an ANN index): inference is a
plain dual encoder.

## Try it in a Space

Hub widgets do not run custom-code models, so the interactive demo of this model is a Space: the `atr` package writes
one (a Gradio search page with text and query-by-example search, a player that starts at the matched span) with
`atr-search space ./space --model {{ repo_id }} --audio-dir your_recordings/`, then
`hf upload {{ space_id }} ./space --repo-type space` publishes it at
[{{ space_id }}](https://huggingface.co/spaces/{{ space_id }}).

## Deploy on Inference Endpoints

This repository has a custom handler, `handler.py` (with its `requirements.txt`), so it deploys as a dedicated
[Inference Endpoint](https://huggingface.co/docs/inference-endpoints/guides/custom_handler). Send
`{"inputs": <audio>, "parameters": {"candidate_labels": ["dog", "rain"]}}` (audio as the file's bytes, their base64
string, or a list of samples with `parameters.sampling_rate`) for labels with scores, best first; a string or a list of
strings for text embeddings (`text_embeds`); audio without labels for its embedding (`audio_embeds`), `chunk_weights`
and `chunk_spans` (the seconds each chunk holds).

## Architecture

{{ architecture }}

## Loss

{{ loss }}

## Training

{{ training }}

## Evaluation

Metrics as defined in `atr.metrics` (docs/metrics.md): `t2a_*` ranks clips for each caption; `a2t_R@K` is the
LAION-CLAP/WavCaps hit rate (any of the clip's captions in the top K) and `a2t_recall@K` (in the model-index) the DCASE
recall; mAP@10 is AP@10 normalised by the number of relevant items; zero-shot accuracy is R@1 over the class prompts.
Noisy conditions mix noise into the test audio at the given SNR.

{{ eval_tables }}

## Limitations

{{ limitations }}

## Citation

```bibtex
{{ citation }}
```
"""


__all__ = ["CITATION", "TEMPLATE", "USAGE"]
