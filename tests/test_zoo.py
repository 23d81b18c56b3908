"""A zoo of Hugging Face architectures from small random configs, each through the default pipeline with dynamic
dims: it matches eager at two shapes, or a dimension it cannot keep dynamic is made static (said in the report)
and other shapes are refused with an InputError. No crash, nothing silently wrong.

Encoders (absolute, relative-bucket and disentangled positions), decoders (learned, rotary, partial rotary,
ALiBi; multi-head, grouped- and multi-query; local and sliding-window attention; parallel blocks; logit
soft-capping), encoder-decoder encoders, a vision transformer and two audio encoders. Lowered with
``backend="eager"`` (the passes are what differs between architectures; Inductor runs on the seven models of
test_hf_configs and on the real ones).
"""
import pytest
import torch
import transformers as tf

import fxopt
from conftest import rel_err

V, H, I, L, NH = 256, 32, 64, 2, 4  # vocab, hidden, intermediate, layers, heads
POS = 128


def _text(batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[-1, : seq // 3] = 0  # a left-padded row: masks must survive the passes
    return {"input_ids": ids, "attention_mask": mask}


def _lm(cls, config_cls, **kw):
    return lambda: (cls(config_cls(vocab_size=V, **kw)), _text)


def _llama_like(cls, config_cls, **kw):
    base = dict(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=NH,
                num_key_value_heads=2, max_position_embeddings=POS)
    return _lm(cls, config_cls, **{**base, **kw})


def _bert_like(cls, config_cls, **kw):
    base = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=I,
                max_position_embeddings=POS)
    return _lm(cls, config_cls, **{**base, **kw})


def _vit():
    model = tf.ViTModel(tf.ViTConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=I,
                                     image_size=32, patch_size=8))
    return model, lambda batch, seq, seed=0: {
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


def _wav2vec2():
    model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                                               intermediate_size=I, conv_dim=(16, 16), conv_stride=(5, 2),
                                               conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                               num_conv_pos_embedding_groups=4, do_stable_layer_norm=True))
    return model, lambda batch, seq, seed=0: {
        "input_values": torch.randn(batch, 40 * seq, generator=torch.Generator().manual_seed(seed))}


def _whisper_encoder():
    model = tf.WhisperModel(tf.WhisperConfig(vocab_size=V, d_model=H, encoder_layers=L, decoder_layers=1,
                                             encoder_attention_heads=NH, decoder_attention_heads=NH,
                                             encoder_ffn_dim=I, decoder_ffn_dim=I, num_mel_bins=16,
                                             max_source_positions=16, max_target_positions=POS, pad_token_id=0,
                                             bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).get_encoder()
    return model, lambda batch, seq, seed=0: {
        "input_features": torch.randn(batch, 16, 32, generator=torch.Generator().manual_seed(seed))}


def _bart_encoder():
    model = tf.BartModel(tf.BartConfig(vocab_size=V, d_model=H, encoder_layers=L, decoder_layers=1,
                                       encoder_attention_heads=NH, decoder_attention_heads=NH, encoder_ffn_dim=I,
                                       decoder_ffn_dim=I, max_position_embeddings=POS)).get_encoder()
    return model, _text


ZOO = {
    # encoders
    "bert": _bert_like(tf.BertModel, tf.BertConfig),
    "roberta": _bert_like(tf.RobertaModel, tf.RobertaConfig, pad_token_id=1),
    "distilbert": _lm(tf.DistilBertModel, tf.DistilBertConfig, dim=H, n_layers=L, n_heads=NH, hidden_dim=I,
                      max_position_embeddings=POS),
    "albert": _bert_like(tf.AlbertModel, tf.AlbertConfig, embedding_size=16),
    "electra": _bert_like(tf.ElectraModel, tf.ElectraConfig, embedding_size=16),
    "deberta-v2 (relative positions)": _bert_like(tf.DebertaV2Model, tf.DebertaV2Config, relative_attention=True,
                                                  position_buckets=16, pos_att_type=["p2c", "c2p"]),
    "mpnet (relative buckets)": _bert_like(tf.MPNetModel, tf.MPNetConfig),
    "bert for classification": _bert_like(tf.BertForSequenceClassification, tf.BertConfig, num_labels=3),
    # decoders
    "gpt2 (learned positions)": _lm(tf.GPT2LMHeadModel, tf.GPT2Config, n_embd=H, n_layer=L, n_head=NH,
                                    n_positions=POS),
    "opt": _lm(tf.OPTForCausalLM, tf.OPTConfig, hidden_size=H, num_hidden_layers=L, ffn_dim=I,
               num_attention_heads=NH, max_position_embeddings=POS, word_embed_proj_dim=H),
    "gpt-neo (local attention)": _lm(tf.GPTNeoForCausalLM, tf.GPTNeoConfig, hidden_size=H, num_layers=L,
                                     num_heads=NH, attention_types=[[["global", "local"], 1]], window_size=8,
                                     max_position_embeddings=POS),
    "gpt-neox (partial rotary)": _lm(tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig, hidden_size=H, num_hidden_layers=L,
                                     num_attention_heads=NH, intermediate_size=I, rotary_pct=0.25,
                                     max_position_embeddings=POS),
    "gpt-j (rotary, parallel)": _lm(tf.GPTJForCausalLM, tf.GPTJConfig, n_embd=H, n_layer=L, n_head=NH, rotary_dim=4,
                                    n_positions=POS),
    "codegen": _lm(tf.CodeGenForCausalLM, tf.CodeGenConfig, n_embd=H, n_layer=L, n_head=NH, rotary_dim=4,
                   n_positions=POS, n_ctx=POS),
    "bloom (alibi)": _lm(tf.BloomForCausalLM, tf.BloomConfig, hidden_size=H, n_layer=L, n_head=NH),
    "mpt (alibi)": _lm(tf.MptForCausalLM, tf.MptConfig, d_model=H, n_heads=NH, n_layers=L, max_seq_len=POS),
    "falcon (multi-query)": _lm(tf.FalconForCausalLM, tf.FalconConfig, hidden_size=H, num_hidden_layers=L,
                                num_attention_heads=NH, new_decoder_architecture=False, multi_query=True,
                                alibi=False),
    "llama (grouped-query)": _llama_like(tf.LlamaForCausalLM, tf.LlamaConfig),
    "mistral (sliding window)": _llama_like(tf.MistralForCausalLM, tf.MistralConfig, sliding_window=8),
    "qwen2": _llama_like(tf.Qwen2ForCausalLM, tf.Qwen2Config),
    "qwen3": _llama_like(tf.Qwen3ForCausalLM, tf.Qwen3Config, head_dim=8),
    "gemma": _llama_like(tf.GemmaForCausalLM, tf.GemmaConfig, head_dim=8, num_key_value_heads=1),
    "gemma2 (soft-capping, sliding)": _llama_like(tf.Gemma2ForCausalLM, tf.Gemma2Config, head_dim=8,
                                                   sliding_window=8),
    "phi (partial rotary, parallel)": _llama_like(tf.PhiForCausalLM, tf.PhiConfig, partial_rotary_factor=0.5),
    "phi3": _llama_like(tf.Phi3ForCausalLM, tf.Phi3Config, pad_token_id=0),
    "stablelm": _llama_like(tf.StableLmForCausalLM, tf.StableLmConfig),
    "olmo": _llama_like(tf.OlmoForCausalLM, tf.OlmoConfig),
    "starcoder2": _llama_like(tf.Starcoder2ForCausalLM, tf.Starcoder2Config),
    "granite": _llama_like(tf.GraniteForCausalLM, tf.GraniteConfig),
    # encoder-decoder encoders
    "t5 encoder (relative buckets)": _lm(tf.T5EncoderModel, tf.T5Config, d_model=H, d_kv=8, d_ff=I, num_layers=L,
                                         num_heads=NH),
    "mt5 encoder": _lm(tf.MT5EncoderModel, tf.MT5Config, d_model=H, d_kv=8, d_ff=I, num_layers=L, num_heads=NH),
    "bart encoder": _bart_encoder,
    # vision and audio
    "vit": _vit,
    "wav2vec2": _wav2vec2,
    "whisper encoder": _whisper_encoder,
}


def _main_output(out):
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_matches_eager_or_says_why(name):
    torch.manual_seed(0)
    model, make = ZOO[name]()
    model = model.eval()
    compiled = fxopt.compile(model, make(2, 12), backend="eager")
    static = [note for note in compiled.report.notes if " is static (" in note]
    with torch.no_grad():
        for batch, seq in ((2, 12), (3, 7)):
            inputs = make(batch, seq, seed=batch * 100 + seq)
            try:
                out = compiled(**inputs)
            except fxopt.InputError as e:
                assert static, f"{name}: {e} although every dim stayed dynamic"
                continue
            ref = model(**inputs)
            assert type(out) is type(ref)
            got, want = _main_output(out), _main_output(ref)
            mask = inputs.get("attention_mask")
            if mask is not None and got.dim() >= 2 and tuple(got.shape[:2]) == tuple(mask.shape):
                got, want = got[mask.bool()], want[mask.bool()]  # padded positions are don't-care
            err = rel_err(got, want)
            assert err < 1e-4, (name, batch, seq, err)
