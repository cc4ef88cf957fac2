"""The built-in stage kinds, steps and crawl backends, registered lazily by name.

Each section belongs to one part of the code base; add a line to the section of the module you write.
"""

from __future__ import annotations

from corpusforge.registry import BACKENDS, STAGES, STEPS

# --- core -------------------------------------------------------------------------------------------------
STAGES.add("process", "corpusforge.process:ProcessStage")
STAGES.add("shards", "corpusforge.input_stage:ShardsInputStage")

# --- crawl (corpusforge/crawl) ----------------------------------------------------------------------------
STAGES.add("crawl", "corpusforge.crawl.stage:CrawlStage")
STAGES.add("read_html", "corpusforge.crawl.local:ReadHtmlStage")
STAGES.add("read_jsonl", "corpusforge.crawl.local:ReadJsonlStage")
STAGES.add("read_warc", "corpusforge.crawl.local:ReadWarcStage")
BACKENDS.add("requests+lxml", "corpusforge.crawl.backends.requests_lxml:RequestsLxmlBackend")
BACKENDS.add("requests+bs4", "corpusforge.crawl.backends.requests_bs4:RequestsBs4Backend")
BACKENDS.add("scrapy", "corpusforge.crawl.backends.scrapy:ScrapyBackend")
BACKENDS.add("selenium", "corpusforge.crawl.backends.selenium:SeleniumBackend")
BACKENDS.add("auto", "corpusforge.crawl.backends.selenium:AutoBackend")
BACKENDS.add("langchain", "corpusforge.crawl.backends.langchain:LangchainBackend")

# --- clean (corpusforge/steps) ----------------------------------------------------------------------------
STEPS.add("extract", "corpusforge.steps.extract:Extract")
STEPS.add("normalize", "corpusforge.steps.normalize:Normalize")
STEPS.add("length", "corpusforge.steps.filters.basic:LengthFilter")
STEPS.add("gopher_quality", "corpusforge.steps.filters.gopher:GopherQualityFilter")
STEPS.add("gopher_repetition", "corpusforge.steps.filters.gopher:GopherRepetitionFilter")
STEPS.add("c4", "corpusforge.steps.filters.c4:C4Filter")
STEPS.add("fineweb_quality", "corpusforge.steps.filters.fineweb:FineWebQualityFilter")
STEPS.add("url_blocklist", "corpusforge.steps.filters.url:UrlBlocklistFilter")
STEPS.add("language", "corpusforge.steps.filters.language:LanguageFilter")
STEPS.add("pii", "corpusforge.steps.pii:PiiMasker")
STEPS.add("site_boilerplate", "corpusforge.steps.boilerplate:SiteBoilerplate")
STAGES.add("exact_dedup", "corpusforge.steps.dedup.exact:ExactDedupStage")
STAGES.add("minhash_dedup", "corpusforge.steps.dedup.minhash:MinHashDedupStage")

# --- tokenizer and token shards (corpusforge/tokenizer.py, corpusforge/shards.py) -------------------------
STAGES.add("tokenizer", "corpusforge.tokenizer:TokenizerStage")
STAGES.add("tokens", "corpusforge.shards:TokensStage")

# --- trainer (corpusforge/train) --------------------------------------------------------------------------
STAGES.add("train", "corpusforge.train.stage:TrainStage")
