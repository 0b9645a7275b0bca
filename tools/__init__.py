"""Knowledge backends, the reranker and the LangChain tools built on them."""
