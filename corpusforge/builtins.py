"""The built-in stage kinds, steps and crawl backends: name → ``"module:attr"``, imported on first use.

Data only (no imports), so ``registry.py`` reads it without a cycle and ``import corpusforge`` stays light.
Each table is grouped by the code folder that holds the classes; add a line beside the module you write.
"""

STAGES: dict[str, str] = {
    # inputs (corpusforge/inputs.py)
    "read_html": "corpusforge.inputs:ReadHtmlStage",
    "read_jsonl": "corpusforge.inputs:ReadJsonlStage",
    "read_warc": "corpusforge.inputs:ReadWarcStage",
    "shards": "corpusforge.inputs:ShardsInputStage",
    # crawl (corpusforge/crawl)
    "crawl": "corpusforge.crawl.stage:CrawlStage",
    # clean (corpusforge/clean)
    "process": "corpusforge.clean.process:ProcessStage",
    # dedup (corpusforge/dedup)
    "exact_dedup": "corpusforge.dedup.exact:ExactDedupStage",
    "minhash_dedup": "corpusforge.dedup.minhash:MinHashDedupStage",
    "decontaminate": "corpusforge.dedup.decontam:DecontaminateStage",
    # tokenizer and token shards (corpusforge/tokens)
    "tokenizer": "corpusforge.tokens.stage:TokenizerStage",
    "tokens": "corpusforge.tokens.stage:TokensStage",
    # trainer (corpusforge/train)
    "train": "corpusforge.train.stage:TrainStage",
}

STEPS: dict[str, str] = {
    "extract": "corpusforge.clean.extract:Extract",
    "normalize": "corpusforge.clean.normalize:Normalize",
    "site_boilerplate": "corpusforge.clean.boilerplate:SiteBoilerplate",
    "pii": "corpusforge.clean.pii:PiiMasker",
    "length": "corpusforge.clean.filters.basic:LengthFilter",
    "gopher_quality": "corpusforge.clean.filters.gopher:GopherQualityFilter",
    "gopher_repetition": "corpusforge.clean.filters.gopher:GopherRepetitionFilter",
    "c4": "corpusforge.clean.filters.c4:C4Filter",
    "fineweb_quality": "corpusforge.clean.filters.fineweb:FineWebQualityFilter",
    "url_blocklist": "corpusforge.clean.filters.url:UrlBlocklistFilter",
    "language": "corpusforge.clean.filters.language:LanguageFilter",
}

BACKENDS: dict[str, str] = {
    "requests+lxml": "corpusforge.crawl.backends.requests_lxml:RequestsLxmlBackend",
    "requests+bs4": "corpusforge.crawl.backends.requests_bs4:RequestsBs4Backend",
    "scrapy": "corpusforge.crawl.backends.scrapy:ScrapyBackend",
    "selenium": "corpusforge.crawl.backends.selenium:SeleniumBackend",
    "auto": "corpusforge.crawl.backends.selenium:AutoBackend",
    "langchain": "corpusforge.crawl.backends.langchain:LangchainBackend",
}
