"""The crawl stage: spiders (definitions), backends (I/O only), robots, politeness and a durable frontier."""
