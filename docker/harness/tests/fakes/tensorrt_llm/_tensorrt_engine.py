"""Fake tensorrt_llm._tensorrt_engine.LLM: validates against TrtLlmArgs."""
import tensorrt_llm
from tensorrt_llm.llmapi.llm_args import TrtLlmArgs


class LLM(tensorrt_llm.LLM):
    _args = TrtLlmArgs
