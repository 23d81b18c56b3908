"""fxopt's pass library: one file per pass, each a :class:`fxopt.GraphPass` built with the public API.

``BUILTIN_PASSES`` lists them; the default pipeline (``fxopt.pipeline.DEFAULT_PIPELINE``) names the
ones it runs, in order.
"""
from fxopt.passes.eliminate_dead_nodes import eliminate_dead_nodes
from fxopt.passes.canonicalize import canonicalize
from fxopt.passes.cast_attention_bf16 import cast_attention_bf16
from fxopt.passes.cast_linears_bf16 import cast_linears_bf16
from fxopt.passes.eliminate_common_subexpressions import eliminate_common_subexpressions
from fxopt.passes.fold_constants import fold_constants
from fxopt.passes.fold_position_tables import fold_position_tables
from fxopt.passes.fuse_attention import fuse_attention
from fxopt.passes.single_query_attention import single_query_attention
from fxopt.passes.grouped_query_attention import grouped_query_attention
from fxopt.passes.fuse_layer_norm import fuse_layer_norm
from fxopt.passes.fuse_rms_norm import fuse_rms_norm
from fxopt.passes.fuse_sibling_linears import fuse_sibling_linears
from fxopt.passes.prune_attention_heads import prune_attention_heads
from fxopt.passes.prune_mlp_channels import prune_mlp_channels
from fxopt.passes.factorize_low_rank import factorize_low_rank
from fxopt.passes.quantize_dynamic_int8 import quantize_dynamic_int8
from fxopt.passes.fuse_gelu_quantize_rows import fuse_gelu_quantize_rows
from fxopt.passes.quantize_static_int8 import quantize_static_int8
from fxopt.passes.smooth_activations import smooth_activations
from fxopt.passes.quantize_weights_int4 import quantize_weights_int4
from fxopt.passes.quantize_weights_int8 import quantize_weights_int8
from fxopt.passes.select_gemm_backend import select_gemm_backend
from fxopt.passes.pack_linears_bf16 import pack_linears_bf16
from fxopt.passes.native_attention import native_attention

BUILTIN_PASSES = (
    eliminate_dead_nodes,
    canonicalize,
    eliminate_common_subexpressions,
    fold_constants,
    fold_position_tables,
    fuse_layer_norm,
    fuse_rms_norm,
    fuse_attention,
    single_query_attention,
    grouped_query_attention,
    prune_attention_heads,
    prune_mlp_channels,
    factorize_low_rank,
    fuse_sibling_linears,
    smooth_activations,
    quantize_dynamic_int8,
    quantize_static_int8,
    cast_linears_bf16,
    cast_attention_bf16,
    fuse_gelu_quantize_rows,
    quantize_weights_int8,
    quantize_weights_int4,
    select_gemm_backend,
    pack_linears_bf16,
    native_attention,
)

__all__ = ["BUILTIN_PASSES", "eliminate_dead_nodes", "canonicalize", "eliminate_common_subexpressions",
           "fold_constants", "fold_position_tables", "fuse_layer_norm", "fuse_rms_norm", "fuse_attention",
           "single_query_attention", "grouped_query_attention",
           "prune_attention_heads", "prune_mlp_channels", "factorize_low_rank", "fuse_sibling_linears", "smooth_activations", "quantize_dynamic_int8", "quantize_static_int8", "cast_linears_bf16",
           "cast_attention_bf16", "fuse_gelu_quantize_rows",
           "quantize_weights_int8", "quantize_weights_int4", "select_gemm_backend", "pack_linears_bf16",
           "native_attention"]
