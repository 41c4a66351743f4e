//! The parameter registry: every llem 0.7.0 experiment-config field, as data.
//!
//! One tree of [`Model`]s (pydantic classes) and [`Field`]s drives validation and
//! coercion, the typed dump that config hashes are taken over, the unknown-key check
//! with "did you mean", and the generated config reference. Field order is llem's
//! declaration order (it is the dump order). The fleet-only `synthetic` engine lives
//! here too; it is dumped only for `engine: synthetic` so llem configs hash as in llem.

/// What a field accepts (FORMAT.md 3 and 4.3).
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Int,
    Float,
    Bool,
    /// A string; `min_len` gives pydantic's `string_too_short`.
    Str {
        min_len: usize,
    },
    /// Not validated; the parsed YAML value is kept.
    Any,
    /// A `Literal[...]` of strings (error type `literal_error`).
    Choice(&'static [&'static str]),
    /// A Python `Enum` of strings (error type `enum`).
    Enum(&'static [&'static str]),
    /// A `Literal[...]` of ints.
    IntChoice(&'static [i64]),
    /// `bool | Literal["never"]`.
    BoolOrNever,
    /// `tuple[float, float]`.
    FloatPair,
    /// `dict[str, Any]`.
    StrMap,
    /// `list[int]`.
    IntList,
    /// A nested model.
    Model(&'static Model),
}

/// A field's default as it appears in the dump.
#[derive(Clone, Copy, Debug)]
pub enum DefaultValue {
    Required,
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
    EmptyList,
    /// The nested model with all its defaults.
    Model,
}

/// What happens to keys a model does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    Forbid,
    Allow,
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
    pub default: DefaultValue,
    pub ge: Option<f64>,
    pub gt: Option<f64>,
    pub le: Option<f64>,
    pub lt: Option<f64>,
    /// Whether changing it changes what the GPU executes (false for measurement
    /// methodology, warmup protocol, SLO bounds).
    pub energy_relevant: bool,
    pub doc: &'static str,
}

#[derive(Debug)]
pub struct Model {
    /// The pydantic class name, as `model_type` errors print it.
    pub class_name: &'static str,
    pub extra: Extra,
    pub fields: &'static [Field],
}

impl Model {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn fld(name: &'static str, kind: Kind, default: DefaultValue) -> Field {
    Field {
        name,
        kind,
        nullable: false,
        default,
        ge: None,
        gt: None,
        le: None,
        lt: None,
        energy_relevant: true,
        doc: "",
    }
}

impl Field {
    const fn opt(mut self) -> Self {
        self.nullable = true;
        self
    }
    const fn ge(mut self, v: f64) -> Self {
        self.ge = Some(v);
        self
    }
    const fn gt(mut self, v: f64) -> Self {
        self.gt = Some(v);
        self
    }
    const fn le(mut self, v: f64) -> Self {
        self.le = Some(v);
        self
    }
    const fn lt(mut self, v: f64) -> Self {
        self.lt = Some(v);
        self
    }
    const fn meta(mut self) -> Self {
        self.energy_relevant = false;
        self
    }
    const fn doc(mut self, d: &'static str) -> Self {
        self.doc = d;
        self
    }
}

use DefaultValue as D;
use Kind as K;

const S: Kind = K::Str { min_len: 0 };
const S1: Kind = K::Str { min_len: 1 };

/// Engines llem knows, then the fleet's emulated one.
pub const LLEM_ENGINES: &[&str] = &["transformers", "vllm", "tensorrt"];
pub const ENGINES: &[&str] = &["transformers", "vllm", "tensorrt", "synthetic"];

pub static DATASET: Model = Model {
    class_name: "DatasetConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("source", S1, D::Str("aienergyscore"))
            .doc("built-in alias `aienergyscore` or a path to a .jsonl file"),
        fld("n_prompts", K::Int, D::Int(100))
            .ge(1.0)
            .doc("exact number of prompts used"),
        fld(
            "order",
            K::Choice(&["interleaved", "grouped", "shuffled"]),
            D::Str("interleaved"),
        )
        .doc("prompt order"),
    ],
};

pub static TASK: Model = Model {
    class_name: "TaskConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("model", S1, D::Required).doc("Hugging Face id or local path"),
        fld("dataset", K::Model(&DATASET), D::Model).doc("prompt source"),
        fld("max_input_tokens", K::Int, D::Int(256))
            .opt()
            .ge(1.0)
            .doc("prompt truncation; null = none"),
        fld("max_output_tokens", K::Int, D::Int(256))
            .opt()
            .ge(1.0)
            .doc("generation budget; null = until EOS"),
        fld("random_seed", K::Int, D::Int(42)).doc("inference RNG and shuffled prompt order seed"),
    ],
};

pub static BASELINE: Model = Model {
    class_name: "BaselineConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("enabled", K::Bool, D::Bool(true))
            .meta()
            .doc("measure idle power and subtract it"),
        fld("duration_seconds", K::Float, D::Float(30.0))
            .ge(5.0)
            .le(120.0)
            .meta(),
        fld(
            "strategy",
            K::Choice(&["cached", "validated", "fresh"]),
            D::Str("validated"),
        )
        .meta(),
        fld("cache_ttl_seconds", K::Float, D::Float(7200.0))
            .ge(60.0)
            .meta(),
        fld("validation_interval", K::Int, D::Int(5)).ge(1.0).meta(),
        fld("drift_threshold", K::Float, D::Float(0.1))
            .ge(0.01)
            .le(0.5)
            .meta(),
    ],
};

pub static MEASUREMENT: Model = Model {
    class_name: "MeasurementConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("baseline", K::Model(&BASELINE), D::Model).meta(),
        fld(
            "energy_sampler",
            K::Choice(&["auto", "nvml", "zeus", "codecarbon"]),
            D::Str("auto"),
        )
        .opt()
        .meta(),
        fld("latency_profiling", K::Bool, D::Bool(false)).meta(),
        fld(
            "measurement_methodology",
            K::Choice(&["total", "windowed", "steady_state"]),
            D::Str("total"),
        )
        .meta(),
        fld("measurement_window", K::FloatPair, D::Null)
            .opt()
            .meta(),
        fld("warmup_discard_fraction", K::Float, D::Float(0.1))
            .ge(0.0)
            .lt(1.0)
            .meta(),
        fld("warmup_discard_seconds", K::Float, D::Null)
            .opt()
            .ge(0.0)
            .meta(),
        fld("steady_state_auto_detect", K::Bool, D::Bool(false)).meta(),
    ],
};

pub static OFFLINE_WARMUP: Model = Model {
    class_name: "WarmupConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("enabled", K::Bool, D::Bool(true)).meta(),
        fld("n_prompts", K::Int, D::Int(5)).ge(1.0).meta(),
        fld("thermal_floor_seconds", K::Float, D::Float(60.0))
            .ge(30.0)
            .meta(),
        fld("convergence_detection", K::Bool, D::Bool(false)).meta(),
        fld("cv_threshold", K::Float, D::Float(0.05))
            .ge(0.01)
            .le(0.5)
            .meta(),
        fld("max_prompts", K::Int, D::Int(20)).ge(5.0).meta(),
        fld("window_size", K::Int, D::Int(3)).ge(3.0).meta(),
        fld("min_prompts", K::Int, D::Int(5)).ge(1.0).meta(),
    ],
};

pub static OFFLINE: Model = Model {
    class_name: "OfflineSection",
    extra: Extra::Forbid,
    fields: &[fld("warmup", K::Model(&OFFLINE_WARMUP), D::Model).meta()],
};

pub static SLO: Model = Model {
    class_name: "SloConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("ttft_ms", K::Float, D::Null).opt().gt(0.0).meta(),
        fld("tpot_ms", K::Float, D::Null).opt().gt(0.0).meta(),
        fld("percentile", K::Float, D::Float(0.99))
            .gt(0.0)
            .le(1.0)
            .meta(),
    ],
};

pub static TRAFFIC: Model = Model {
    class_name: "TrafficConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("rate", K::Float, D::Required)
            .gt(0.0)
            .doc("requests per second"),
        fld(
            "arrival",
            K::Choice(&["poisson", "gamma"]),
            D::Str("poisson"),
        ),
        fld("burstiness", K::Float, D::Null).opt().gt(0.0),
        fld("window_seconds", K::Float, D::Null).opt().gt(0.0),
        fld("window_requests", K::Int, D::Null).opt().ge(1.0),
        fld("ramp_exclusion_seconds", K::Float, D::Float(30.0)).ge(0.0),
        fld("concurrency_cap", K::Int, D::Null).opt().ge(1.0),
        fld("slo", K::Model(&SLO), D::Null).opt().meta(),
        fld("seed", K::Int, D::Null).opt(),
    ],
};

pub static SERVER_WARMUP: Model = Model {
    class_name: "ServerWarmupConfig",
    extra: Extra::Forbid,
    fields: &[
        fld(
            "mode",
            K::Choice(&["composite", "fixed"]),
            D::Str("composite"),
        )
        .meta(),
        fld("timeout_seconds", K::Float, D::Float(900.0))
            .gt(0.0)
            .meta(),
        fld("duration_seconds", K::Float, D::Float(300.0))
            .ge(0.0)
            .meta(),
    ],
};

pub static SERVER: Model = Model {
    class_name: "ServerSection",
    extra: Extra::Forbid,
    fields: &[
        fld("traffic", K::Model(&TRAFFIC), D::Required),
        fld("warmup", K::Model(&SERVER_WARMUP), D::Model).meta(),
        fld("cooldown_seconds", K::Float, D::Float(0.0))
            .ge(0.0)
            .meta(),
    ],
};

// ---- transformers -------------------------------------------------------------

pub static TRANSFORMERS_ENGINE_PARAMS: Model = Model {
    class_name: "EngineParams",
    extra: Extra::Allow,
    fields: &[
        fld("dtype", K::Any, D::Null).opt(),
        fld("attn_implementation", K::Any, D::Null).opt(),
        fld("load_in_4bit", K::Any, D::Null).opt(),
        fld("load_in_8bit", K::Any, D::Null).opt(),
        fld("bnb_4bit_compute_dtype", K::Any, D::Null).opt(),
        fld("bnb_4bit_quant_type", K::Any, D::Null).opt(),
        fld("bnb_4bit_use_double_quant", K::Any, D::Null).opt(),
        fld("use_cache", K::Bool, D::Null).opt(),
        fld("cache_implementation", S, D::Null).opt(),
        fld("num_beams", K::Int, D::Null).opt(),
        fld("early_stopping", K::BoolOrNever, D::Null).opt(),
        fld("length_penalty", K::Float, D::Null).opt(),
        fld("no_repeat_ngram_size", K::Int, D::Null).opt(),
        fld("prompt_lookup_num_tokens", K::Int, D::Null).opt(),
        fld("device_map", K::Any, D::Null).opt(),
        fld("max_memory", K::Any, D::Null).opt(),
        fld("low_cpu_mem_usage", K::Any, D::Null).opt(),
        fld("tp_plan", K::Any, D::Null).opt(),
        fld("tp_size", K::Any, D::Null).opt(),
    ],
};

pub static TRANSFORMERS_SAMPLING_PARAMS: Model = Model {
    class_name: "SamplingParams",
    extra: Extra::Allow,
    fields: &[
        fld("temperature", K::Float, D::Null).opt(),
        fld("do_sample", K::Bool, D::Null).opt(),
        fld("top_k", K::Int, D::Null).opt(),
        fld("top_p", K::Float, D::Null).opt(),
        fld("repetition_penalty", K::Float, D::Null).opt(),
        fld("min_p", K::Float, D::Null).opt(),
        fld("min_new_tokens", K::Int, D::Null).opt(),
    ],
};

pub static TRANSFORMERS_LLEM_EXECUTION: Model = Model {
    class_name: "TransformersLlemExecution",
    extra: Extra::Forbid,
    fields: &[
        fld("batch_size", K::Int, D::Null)
            .opt()
            .ge(1.0)
            .doc("static batch size [1]"),
        fld("torch_compile", K::Bool, D::Null).opt(),
        fld("torch_compile_mode", S, D::Null).opt(),
        fld("torch_compile_backend", S, D::Null).opt(),
        fld("allow_tf32", K::Bool, D::Null).opt(),
        fld("autocast_enabled", K::Bool, D::Null).opt(),
        fld(
            "autocast_dtype",
            K::Choice(&["float16", "bfloat16"]),
            D::Null,
        )
        .opt(),
    ],
};

pub static TRANSFORMERS: Model = Model {
    class_name: "TransformersSection",
    extra: Extra::Allow,
    fields: &[
        fld(
            "engine_params",
            K::Model(&TRANSFORMERS_ENGINE_PARAMS),
            D::Null,
        )
        .opt(),
        fld(
            "sampling_params",
            K::Model(&TRANSFORMERS_SAMPLING_PARAMS),
            D::Null,
        )
        .opt(),
        fld(
            "llem_execution",
            K::Model(&TRANSFORMERS_LLEM_EXECUTION),
            D::Null,
        )
        .opt(),
    ],
};

// ---- vllm ------------------------------------------------------------------------

const SPEC_METHODS: &[&str] = &[
    "ngram",
    "medusa",
    "mlp_speculator",
    "draft_model",
    "suffix",
    "eagle",
    "eagle3",
    "extract_hidden_states",
    "deepseek_mtp",
    "mimo_mtp",
    "glm4_moe_mtp",
    "glm4_moe_lite_mtp",
    "glm_ocr_mtp",
    "ernie_mtp",
    "nemotron_h_mtp",
    "exaone_moe_mtp",
    "qwen3_next_mtp",
    "qwen3_5_mtp",
    "longcat_flash_mtp",
    "mtp",
    "pangu_ultra_moe_mtp",
    "step3p5_mtp",
    "ngram_gpu",
];
const MOE_BACKENDS: &[&str] = &[
    "auto",
    "triton",
    "deep_gemm",
    "cutlass",
    "flashinfer_trtllm",
    "flashinfer_cutlass",
    "flashinfer_cutedsl",
    "marlin",
    "aiter",
];

pub static VLLM_SPECULATIVE: Model = Model {
    class_name: "SpeculativeConfig",
    extra: Extra::Allow,
    fields: &[
        fld("code_revision", S, D::Null).opt(),
        fld("disable_padded_drafter_batch", K::Bool, D::Null).opt(),
        fld("draft_load_config", K::Any, D::Null).opt(),
        fld("draft_model_config", K::Any, D::Null).opt(),
        fld("draft_parallel_config", K::Any, D::Null).opt(),
        fld("draft_tensor_parallel_size", K::Int, D::Null).opt(),
        fld("enforce_eager", K::Bool, D::Null).opt(),
        fld("max_model_len", K::Int, D::Null).opt(),
        fld("method", K::Choice(SPEC_METHODS), D::Null).opt(),
        fld("model", S, D::Null).opt(),
        fld("moe_backend", K::Choice(MOE_BACKENDS), D::Null).opt(),
        fld("num_speculative_tokens", K::Int, D::Null).opt(),
        fld("parallel_drafting", K::Bool, D::Null).opt(),
        fld("prompt_lookup_max", K::Int, D::Null).opt(),
        fld("prompt_lookup_min", K::Int, D::Null).opt(),
        fld("quantization", K::Any, D::Null).opt(),
        fld(
            "rejection_sample_method",
            K::Choice(&["strict", "probabilistic", "synthetic"]),
            D::Null,
        )
        .opt(),
        fld("revision", S, D::Null).opt(),
        fld("speculative_token_tree", S, D::Null).opt(),
        fld("suffix_decoding_max_cached_requests", K::Int, D::Null).opt(),
        fld("suffix_decoding_max_spec_factor", K::Float, D::Null).opt(),
        fld("suffix_decoding_max_tree_depth", K::Int, D::Null).opt(),
        fld("suffix_decoding_min_token_prob", K::Float, D::Null).opt(),
        fld("synthetic_acceptance_rate", K::Float, D::Null).opt(),
        fld("target_model_config", K::Any, D::Null).opt(),
        fld("target_parallel_config", K::Any, D::Null).opt(),
        fld("tensor_parallel_size", K::Int, D::Null).opt(),
        fld("use_local_argmax_reduction", K::Bool, D::Null).opt(),
    ],
};

pub static VLLM_COMPILATION: Model = Model {
    class_name: "CompilationConfig",
    extra: Extra::Allow,
    fields: &[
        fld("backend", S, D::Null).opt(),
        fld("cache_dir", S, D::Null).opt(),
        fld("compilation_time", K::Float, D::Null).opt(),
        fld(
            "compile_cache_save_format",
            K::Choice(&["binary", "unpacked"]),
            D::Null,
        )
        .opt(),
        fld("compile_mm_encoder", K::Bool, D::Null).opt(),
        fld("compile_ranges_endpoints", K::Any, D::Null).opt(),
        fld("compile_sizes", K::Any, D::Null).opt(),
        fld("cudagraph_capture_sizes", K::Any, D::Null).opt(),
        fld("cudagraph_copy_inputs", K::Bool, D::Null).opt(),
        fld("cudagraph_mm_encoder", K::Bool, D::Null).opt(),
        fld("cudagraph_mode", K::Any, D::Null).opt(),
        fld("cudagraph_num_of_warmups", K::Int, D::Null).opt(),
        fld("cudagraph_specialize_lora", K::Bool, D::Null).opt(),
        fld("custom_ops", K::Any, D::Null).opt(),
        fld("debug_dump_path", K::Any, D::Null).opt(),
        fld("disabled_custom_ops", K::Any, D::Null).opt(),
        fld("dynamic_shapes_config", K::Any, D::Null).opt(),
        fld("enabled_custom_ops", K::Any, D::Null).opt(),
        fld("encoder_cudagraph_max_images_per_batch", K::Int, D::Null).opt(),
        fld("encoder_cudagraph_token_budgets", K::Any, D::Null).opt(),
        fld("fast_moe_cold_start", K::Any, D::Null).opt(),
        fld("inductor_compile_config", K::Any, D::Null).opt(),
        fld("inductor_passes", K::Any, D::Null).opt(),
        fld("local_cache_dir", S, D::Null).opt(),
        fld("max_cudagraph_capture_size", K::Int, D::Null).opt(),
        fld("mode", K::IntChoice(&[0, 1, 2, 3]), D::Null).opt(),
        fld("pass_config", K::Any, D::Null).opt(),
        fld("splitting_ops", K::Any, D::Null).opt(),
        fld("static_all_moe_layers", K::Any, D::Null).opt(),
        fld("static_forward_context", K::Any, D::Null).opt(),
        fld("traced_files", K::Any, D::Null).opt(),
        fld("use_inductor_graph_partition", K::Bool, D::Null).opt(),
    ],
};

pub static VLLM_ENGINE_PARAMS: Model = Model {
    class_name: "EngineParams",
    extra: Extra::Allow,
    fields: &[
        fld(
            "dtype",
            K::Choice(&["auto", "half", "float16", "bfloat16", "float", "float32"]),
            D::Str("auto"),
        )
        .opt(),
        fld("gpu_memory_utilization", K::Float, D::Float(0.9))
            .opt()
            .gt(0.0)
            .le(1.0),
        fld("cpu_offload_gb", K::Float, D::Float(0.0)).opt().ge(0.0),
        fld("block_size", K::Int, D::Null).opt(),
        fld(
            "kv_cache_dtype",
            K::Choice(&[
                "auto",
                "float16",
                "bfloat16",
                "fp8",
                "fp8_e4m3",
                "fp8_e5m2",
                "fp8_inc",
                "fp8_ds_mla",
            ]),
            D::Str("auto"),
        )
        .opt(),
        fld("enforce_eager", K::Bool, D::Bool(false)).opt(),
        fld("enable_chunked_prefill", K::Bool, D::Null).opt(),
        fld("max_num_seqs", K::Int, D::Null).opt().ge(1.0),
        fld("max_num_batched_tokens", K::Int, D::Null).opt().ge(1.0),
        fld("max_model_len", K::Int, D::Null).opt().ge(1.0),
        fld("tensor_parallel_size", K::Int, D::Int(1)).opt(),
        fld("pipeline_parallel_size", K::Int, D::Int(1)).opt(),
        fld("distributed_executor_backend", K::Any, D::Null).opt(),
        fld("enable_prefix_caching", K::Bool, D::Null).opt(),
        fld("quantization", K::Any, D::Null).opt(),
        fld("speculative_config", K::Model(&VLLM_SPECULATIVE), D::Null).opt(),
        fld("offload_group_size", K::Int, D::Int(0)).opt().ge(0.0),
        fld("offload_num_in_group", K::Int, D::Int(1)).opt().ge(1.0),
        fld("offload_prefetch_step", K::Int, D::Int(1))
            .opt()
            .ge(0.0),
        fld("offload_params", K::Any, D::EmptyList).opt(),
        fld("disable_custom_all_reduce", K::Bool, D::Bool(false)).opt(),
        fld("kv_cache_memory_bytes", K::Int, D::Null).opt(),
        fld("compilation_config", K::Model(&VLLM_COMPILATION), D::Null).opt(),
        fld("attention", K::Any, D::Null).opt(),
        fld("beam_search", K::Any, D::Null).opt(),
    ],
};

pub static VLLM_SAMPLING_PARAMS: Model = Model {
    class_name: "SamplingParams",
    extra: Extra::Allow,
    fields: &[
        fld("temperature", K::Float, D::Float(1.0)).opt(),
        fld("top_k", K::Int, D::Int(0)).opt(),
        fld("top_p", K::Float, D::Float(1.0)).opt(),
        fld("repetition_penalty", K::Float, D::Float(1.0)).opt(),
        fld("min_p", K::Float, D::Float(0.0)).opt(),
        fld("min_tokens", K::Int, D::Int(0)).opt(),
        fld("presence_penalty", K::Float, D::Float(0.0)).opt(),
        fld("frequency_penalty", K::Float, D::Float(0.0)).opt(),
        fld("ignore_eos", K::Bool, D::Bool(false)).opt(),
        fld("n", K::Int, D::Int(1)).opt(),
    ],
};

pub static VLLM: Model = Model {
    class_name: "Config",
    extra: Extra::Allow,
    fields: &[
        fld("engine_params", K::Model(&VLLM_ENGINE_PARAMS), D::Null).opt(),
        fld("sampling_params", K::Model(&VLLM_SAMPLING_PARAMS), D::Null).opt(),
    ],
};

// ---- tensorrt ----------------------------------------------------------------

pub static TENSORRT_ENGINE_PARAMS: Model = Model {
    class_name: "EngineParams",
    extra: Extra::Allow,
    fields: &[
        fld("max_batch_size", K::Int, D::Null).opt(),
        fld("tensor_parallel_size", K::Int, D::Int(1)).opt(),
        fld("pipeline_parallel_size", K::Int, D::Int(1)).opt(),
        fld("max_input_len", K::Int, D::Null).opt(),
        fld("max_seq_len", K::Int, D::Null).opt(),
        fld("max_num_tokens", K::Int, D::Int(8192)).opt(),
        fld("dtype", S, D::Str("auto")).opt(),
        fld("fast_build", K::Bool, D::Bool(false)).opt(),
        fld("backend", K::Choice(&["pytorch", "trt"]), D::Str("pytorch")).opt(),
        fld("quant_config", K::Any, D::Null).opt(),
        fld("kv_cache_config", K::Any, D::Null).opt(),
        fld("scheduler_config", K::Any, D::Null).opt(),
    ],
};

pub static TENSORRT_SAMPLING_PARAMS: Model = Model {
    class_name: "SamplingParams",
    extra: Extra::Allow,
    fields: &[
        fld("temperature", K::Float, D::Null).opt(),
        fld("top_k", K::Int, D::Null).opt(),
        fld("top_p", K::Float, D::Null).opt(),
        fld("repetition_penalty", K::Float, D::Null).opt(),
        fld("min_p", K::Float, D::Null).opt(),
        fld("min_tokens", K::Int, D::Null).opt(),
        fld("n", K::Int, D::Int(1)).opt(),
        fld("ignore_eos", K::Bool, D::Bool(false)).opt(),
    ],
};

pub static TENSORRT: Model = Model {
    class_name: "Config",
    extra: Extra::Allow,
    fields: &[
        fld("engine_params", K::Model(&TENSORRT_ENGINE_PARAMS), D::Null).opt(),
        fld(
            "sampling_params",
            K::Model(&TENSORRT_SAMPLING_PARAMS),
            D::Null,
        )
        .opt(),
    ],
};

// ---- synthetic (fleet only) ----------------------------------------------------

pub static SYNTHETIC_ENGINE_PARAMS: Model = Model {
    class_name: "SyntheticEngineParams",
    extra: Extra::Forbid,
    fields: &[
        fld("batch_size", K::Int, D::Int(1))
            .ge(1.0)
            .doc("prompts per emulated batch"),
        fld(
            "dtype",
            K::Choice(&["float32", "float16", "bfloat16"]),
            D::Str("bfloat16"),
        ),
        fld("load_seconds", K::Float, D::Float(2.0))
            .ge(0.0)
            .doc("emulated model load time"),
        fld("prefill_ms_per_token", K::Float, D::Float(0.02)).ge(0.0),
        fld("decode_ms_per_step", K::Float, D::Float(2.0)).gt(0.0),
        fld("decode_ms_per_sequence", K::Float, D::Float(0.25)).ge(0.0),
        fld("noise", K::Float, D::Float(0.02))
            .ge(0.0)
            .le(0.5)
            .doc("relative timing noise"),
        fld(
            "input_length",
            K::Choice(&["fixed", "uniform", "lognormal"]),
            D::Str("uniform"),
        ),
        fld("tensor_parallel_size", K::Int, D::Null)
            .opt()
            .ge(1.0)
            .doc("GPUs the run needs: it is leased only to a slot of that many GPUs"),
    ],
};

pub static SYNTHETIC_SAMPLING_PARAMS: Model = Model {
    class_name: "SyntheticSamplingParams",
    extra: Extra::Forbid,
    fields: &[fld("temperature", K::Float, D::Null).opt()],
};

pub static SYNTHETIC: Model = Model {
    class_name: "SyntheticSection",
    extra: Extra::Allow,
    fields: &[
        fld("engine_params", K::Model(&SYNTHETIC_ENGINE_PARAMS), D::Null).opt(),
        fld(
            "sampling_params",
            K::Model(&SYNTHETIC_SAMPLING_PARAMS),
            D::Null,
        )
        .opt(),
    ],
};

// ---- top level ----------------------------------------------------------------

pub static EXPERIMENT: Model = Model {
    class_name: "ExperimentConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("task", K::Model(&TASK), D::Required).doc("what is measured"),
        fld("engine", K::Enum(ENGINES), D::Str("transformers")).doc("inference engine"),
        fld(
            "serving_mode",
            K::Choice(&["offline", "server"]),
            D::Required,
        ),
        fld("measurement", K::Model(&MEASUREMENT), D::Model).meta(),
        fld(
            "sampling_preset",
            K::Choice(&["deterministic", "standard", "creative", "factual"]),
            D::Null,
        )
        .opt(),
        fld("transformers", K::Model(&TRANSFORMERS), D::Null).opt(),
        fld("vllm", K::Model(&VLLM), D::Null).opt(),
        fld("tensorrt", K::Model(&TENSORRT), D::Null).opt(),
        fld("synthetic", K::Model(&SYNTHETIC), D::Null)
            .opt()
            .doc("fleet-only emulated engine"),
        fld("server", K::Model(&SERVER), D::Null).opt(),
        fld("offline", K::Model(&OFFLINE), D::Null).opt().meta(),
        fld("passthrough_kwargs", K::StrMap, D::Null).opt(),
    ],
};

pub static OUTPUT: Model = Model {
    class_name: "OutputConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("results_dir", S, D::Null).opt().meta(),
        fld("save_timeseries", K::Bool, D::Bool(true)).meta(),
    ],
};

pub static EXECUTION: Model = Model {
    class_name: "ExecutionConfig",
    extra: Extra::Forbid,
    fields: &[
        fld("n_cycles", K::Int, D::Int(1)).ge(1.0).meta(),
        fld(
            "experiment_order",
            K::Choice(&[
                "sequential",
                "interleave",
                "shuffle",
                "reverse",
                "latin_square",
            ]),
            D::Str("sequential"),
        )
        .meta(),
        fld("experiment_gap_seconds", K::Float, D::Null)
            .opt()
            .ge(0.0)
            .meta(),
        fld("cycle_gap_seconds", K::Float, D::Null)
            .opt()
            .ge(0.0)
            .meta(),
        fld("shuffle_seed", K::Int, D::Null).opt().meta(),
        fld("skip_preflight", K::Bool, D::Bool(false)).meta(),
        fld("max_consecutive_failures", K::Int, D::Int(10))
            .ge(0.0)
            .meta(),
        fld("circuit_breaker_cooldown_seconds", K::Float, D::Float(60.0))
            .ge(0.0)
            .meta(),
        fld("wall_clock_timeout_hours", K::Float, D::Null)
            .opt()
            .gt(0.0)
            .meta(),
        fld("experiment_timeout_seconds", K::Float, D::Float(600.0))
            .gt(0.0)
            .meta(),
        fld("stdout_silence_timeout_seconds", K::Float, D::Float(300.0))
            .ge(0.0)
            .meta(),
        fld("deduplicate_equivalent", K::Bool, D::Bool(true)).meta(),
        fld("gpu_indices", K::IntList, D::Null).opt().meta(),
    ],
};

/// The llem release whose study format and registry this is (FORMAT.md 1).
pub const LLEM_VERSION: &str = "0.7.0";

/// The engine versions llem 0.7.0's rule corpora are pinned to (FORMAT.md 1,
/// corpus `schema_version 1.0.0`): the versions whose parameters the registry and
/// the rules describe.
pub const PINNED_ENGINE_VERSIONS: &[(&str, &str)] = &[
    ("transformers", "5.14.1"),
    ("vllm", "0.19.1"),
    ("tensorrt", "1.2.1"),
];

/// The pinned version of an llem engine (`None` for `synthetic` and unknown names).
pub fn pinned_engine_version(engine: &str) -> Option<&'static str> {
    PINNED_ENGINE_VERSIONS
        .iter()
        .find(|(e, _)| *e == engine)
        .map(|(_, v)| *v)
}

/// The experiment-config registry (the root model).
pub fn registry() -> &'static Model {
    &EXPERIMENT
}

/// The section model of an engine.
pub fn engine_section(engine: &str) -> Option<&'static Model> {
    match engine {
        "transformers" => Some(&TRANSFORMERS),
        "vllm" => Some(&VLLM),
        "tensorrt" => Some(&TENSORRT),
        "synthetic" => Some(&SYNTHETIC),
        _ => None,
    }
}

/// One field of the registry with its dotted path, for docs and lookups.
#[derive(Clone, Debug)]
pub struct FieldInfo {
    pub path: String,
    pub field: &'static Field,
    pub model: &'static Model,
    /// The engine whose section holds the field, if any.
    pub engine: Option<&'static str>,
}

/// Every field under `model`, depth first in declaration order.
pub fn walk(model: &'static Model) -> Vec<FieldInfo> {
    let mut out = Vec::new();
    walk_into(model, "", None, &mut out);
    out
}

fn walk_into(
    model: &'static Model,
    prefix: &str,
    engine: Option<&'static str>,
    out: &mut Vec<FieldInfo>,
) {
    for f in model.fields {
        let path = if prefix.is_empty() {
            f.name.to_string()
        } else {
            format!("{prefix}.{}", f.name)
        };
        let eng = engine.or_else(|| {
            if prefix.is_empty() {
                ENGINES.iter().copied().find(|e| *e == f.name)
            } else {
                None
            }
        });
        out.push(FieldInfo {
            path: path.clone(),
            field: f,
            model,
            engine: eng,
        });
        if let Kind::Model(sub) = f.kind {
            walk_into(sub, &path, eng, out);
        }
    }
}

/// The model at a dotted path of models (`""` = root), if every step is a model field.
pub fn model_at(path: &[&str]) -> Option<&'static Model> {
    let mut m: &'static Model = &EXPERIMENT;
    for seg in path {
        match m.field(seg)?.kind {
            Kind::Model(sub) => m = sub,
            _ => return None,
        }
    }
    Some(m)
}

// ---- the generated config reference (docs/config-reference.md) ------------------

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn py_num(x: f64) -> String {
    crate::pyjson::float_repr(x)
}

/// A bound as pydantic prints it: integral bounds without a fraction.
fn bound_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        py_num(x)
    }
}

fn kind_text(f: &Field) -> String {
    let base = match f.kind {
        Kind::Int => "int".to_string(),
        Kind::Float => "float".to_string(),
        Kind::Bool => "bool".to_string(),
        Kind::Str { min_len: 0 } => "string".to_string(),
        Kind::Str { min_len } => format!("string (min length {min_len})"),
        Kind::Any => "any".to_string(),
        Kind::Choice(_) => "one of".to_string(),
        Kind::Enum(_) => "enum".to_string(),
        Kind::IntChoice(_) => "int, one of".to_string(),
        Kind::BoolOrNever => "bool or \"never\"".to_string(),
        Kind::FloatPair => "[float, float]".to_string(),
        Kind::StrMap => "map string -> any".to_string(),
        Kind::IntList => "list of int".to_string(),
        Kind::Model(m) => format!(
            "object `{}` (unknown keys: {})",
            m.class_name,
            match m.extra {
                Extra::Forbid => "error",
                Extra::Allow => "kept as passthrough",
            }
        ),
    };
    if f.nullable {
        format!("{base}, or null")
    } else {
        base
    }
}

fn default_text(f: &Field) -> String {
    match f.default {
        DefaultValue::Required => "**required**".into(),
        DefaultValue::Null => "null".into(),
        DefaultValue::Int(i) => format!("`{i}`"),
        DefaultValue::Float(x) => format!("`{}`", py_num(x)),
        DefaultValue::Bool(b) => format!("`{b}`"),
        DefaultValue::Str(s) => format!("`\"{s}\"`"),
        DefaultValue::EmptyList => "`[]`".into(),
        DefaultValue::Model => "all defaults".into(),
    }
}

fn allowed_text(f: &Field) -> String {
    let mut parts: Vec<String> = Vec::new();
    match f.kind {
        Kind::Choice(opts) | Kind::Enum(opts) => parts.push(
            opts.iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Kind::IntChoice(opts) => parts.push(
            opts.iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => {}
    }
    if let Some(x) = f.ge {
        parts.push(format!(">= {}", bound_num(x)));
    }
    if let Some(x) = f.gt {
        parts.push(format!("> {}", bound_num(x)));
    }
    if let Some(x) = f.le {
        parts.push(format!("<= {}", bound_num(x)));
    }
    if let Some(x) = f.lt {
        parts.push(format!("< {}", bound_num(x)));
    }
    parts.join("; ")
}

fn table(out: &mut String, rows: &[FieldInfo], prefix: &str) {
    out.push_str("| path | type | default | allowed values / bounds | energy-relevant | doc |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let f = r.field;
        out.push_str(&format!(
            "| `{}{}` | {} | {} | {} | {} | {} |\n",
            prefix,
            r.path,
            md_escape(&kind_text(f)),
            md_escape(&default_text(f)),
            md_escape(&allowed_text(f)),
            if f.energy_relevant { "yes" } else { "no" },
            md_escape(f.doc),
        ));
    }
    out.push('\n');
}

/// docs/config-reference.md, generated from the registry (one table per engine
/// section, the shared fields, `study_execution` and `output`). The test
/// `config_reference_is_up_to_date` (common/tests/config_reference.rs) fails when the
/// committed file differs; `LEM_BLESS=1 cargo test -p lem-common config_reference`
/// rewrites it.
pub fn config_reference_markdown() -> String {
    let all = walk(registry());
    let mut out = String::new();
    out.push_str(&format!(
        "# Config reference\n\n\
<!-- Generated from the parameter registry (common/src/study/schema.rs) by\n\
     `LEM_BLESS=1 cargo test -p lem-common config_reference`. Do not edit by hand. -->\n\n\
Every field of an experiment config as lem fleet validates it: llem {LLEM_VERSION}'s schema\n\
(shared/llem/FORMAT.md section 3) plus the fleet-only `synthetic` engine. Paths are dotted\n\
key paths inside one experiment config; in a study they can be written as fixed fields,\n\
sweep keys or `experiments:` entries. **energy-relevant** says whether changing the\n\
field changes what the GPU executes (no for measurement methodology, warmup protocol,\n\
baselines, SLO bounds). Unknown keys are errors wherever the type column says so; inside\n\
`engine_params` / `sampling_params` of the llem engines they are kept as passthrough\n\
keys. The registry does not record the llem version that introduced each field: every\n\
field here is as of llem {LLEM_VERSION}.\n\n\
Engine versions the llem rule corpora are pinned to: {}.\n\n",
        PINNED_ENGINE_VERSIONS
            .iter()
            .map(|(e, v)| format!("{e} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str("## Shared fields (every engine)\n\n");
    let shared: Vec<FieldInfo> = all.iter().filter(|r| r.engine.is_none()).cloned().collect();
    table(&mut out, &shared, "");
    for e in ENGINES {
        let rows: Vec<FieldInfo> = all
            .iter()
            .filter(|r| r.engine == Some(*e))
            .cloned()
            .collect();
        let title = match pinned_engine_version(e) {
            Some(v) => format!("## Engine `{e}` (pinned {e} {v})\n\n"),
            None => format!(
                "## Engine `{e}` (fleet only: an emulated engine for hosts without a GPU; not an llem engine)\n\n"
            ),
        };
        out.push_str(&title);
        out.push_str(&format!(
            "Only valid with `engine: {e}`; the section of any other engine must be absent or null.\n\n"
        ));
        table(&mut out, &rows, "");
    }
    out.push_str("## `study_execution` (study files only)\n\n");
    table(&mut out, &walk(&EXECUTION), "study_execution.");
    out.push_str("## `output` (study files only)\n\n");
    table(&mut out, &walk(&OUTPUT), "output.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_walk_reaches_nested_fields() {
        let all = walk(registry());
        let p = |s: &str| {
            all.iter()
                .find(|f| f.path == s)
                .unwrap_or_else(|| panic!("{s}"))
        };
        assert_eq!(
            p("vllm.engine_params.compilation_config.mode").engine,
            Some("vllm")
        );
        assert!(!p("server.traffic.slo.ttft_ms").field.energy_relevant);
        assert!(p("task.dataset.n_prompts").field.energy_relevant);
        assert_eq!(p("synthetic.engine_params.noise").field.le, Some(0.5));
        assert!(all.len() > 150);
    }
}
