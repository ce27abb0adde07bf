// placeholder: the SmolLM2 KV fixture reader lands here.
#ifndef STRATA_CODECS_KV_FIXTURE_H_
#define STRATA_CODECS_KV_FIXTURE_H_
#endif
