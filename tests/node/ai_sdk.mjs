// The Vercel AI SDK's OpenAI provider against an Omixa gateway, as an application uses it.
//
//   OMIXA_BASE_URL=http://127.0.0.1:8080/api/v1 OMIXA_API_KEY=omx_live_... node ai_sdk.mjs [STEP...]
//
// Steps (all when none is named):
//   generate, stream            the default provider, createOpenAI(...)(model): the Responses API
//   multi-turn                  a second turn after the first's response messages (the SDK sends
//                               the stored answer back as an item_reference)
//   chat-generate, chat-stream  createOpenAI(...).chat(model): chat completions
//   embed                       createOpenAI(...).embedding(OMIXA_EMBEDDING_MODEL)
//   bad-key                     generateText with a wrong key: the APICallError the SDK throws
// Prints one JSON object, {step: result}, on stdout; exits 1 when a step failed.
import { createOpenAI } from '@ai-sdk/openai';
import { APICallError, embed, generateText, streamText } from 'ai';

const baseURL = process.env.OMIXA_BASE_URL;
const apiKey = process.env.OMIXA_API_KEY;
const model = process.env.OMIXA_MODEL ?? 'gpt-4o-mini';
const embeddingModel = process.env.OMIXA_EMBEDDING_MODEL ?? 'text-embedding-3-small';
const prompt = process.env.OMIXA_PROMPT ?? 'Say something about foxes.';
if (!baseURL || !apiKey) {
  console.error('usage: OMIXA_BASE_URL=... OMIXA_API_KEY=... node ai_sdk.mjs [STEP...]');
  process.exit(2);
}
const provider = createOpenAI({ baseURL, apiKey });
// No retries: a test must see the first answer, not the third.
const common = { prompt, maxRetries: 0 };

function usageOf(usage) {
  return { inputTokens: usage?.inputTokens ?? null, outputTokens: usage?.outputTokens ?? null };
}

async function generate(languageModel) {
  const result = await generateText({ model: languageModel, ...common });
  return {
    text: result.text,
    finishReason: result.finishReason,
    usage: usageOf(result.usage),
    responseId: result.finalStep.response.id,
    modelId: result.finalStep.response.modelId,
    warnings: result.warnings ?? [],
  };
}

async function stream(languageModel) {
  // streamText reports failures as stream parts rather than by throwing: collect them.
  const result = streamText({ model: languageModel, ...common });
  const deltas = [];
  const errors = [];
  let finish = null;
  for await (const part of result.fullStream) {
    if (part.type === 'text-delta') deltas.push(part.text);
    else if (part.type === 'error') errors.push(describe(part.error));
    else if (part.type === 'finish') finish = part;
  }
  if (errors.length) {
    const error = new Error(`streamText reported ${errors.length} error(s)`);
    error.details = errors;
    throw error;
  }
  const response = await result.response;
  return {
    text: deltas.join(''),
    deltas: deltas.length,
    finishReason: finish?.finishReason ?? null,
    usage: usageOf(finish?.totalUsage),
    responseId: response.id,
    modelId: response.modelId,
  };
}

async function badKey() {
  const wrong = createOpenAI({ baseURL, apiKey: 'omx_live_not_a_key' });
  try {
    await generateText({ model: wrong(model), ...common });
  } catch (error) {
    if (!APICallError.isInstance(error)) throw error;
    return describe(error);
  }
  throw new Error('a wrong key was accepted');
}

function describe(error) {
  if (APICallError.isInstance(error)) {
    return {
      name: error.name,
      message: error.message,
      statusCode: error.statusCode,
      isRetryable: error.isRetryable,
      url: error.url,
      data: error.data ?? null,
    };
  }
  return { name: error?.name ?? typeof error, message: String(error?.message ?? error), details: error?.details };
}

async function multiTurn(languageModel) {
  const first = await generateText({ model: languageModel, ...common });
  const messages = [{ role: 'user', content: prompt }, ...first.response.messages, { role: 'user', content: 'And then?' }];
  const second = await generateText({ model: languageModel, messages, maxRetries: 0 });
  return {
    first: { text: first.text, responseId: first.finalStep.response.id },
    second: { text: second.text, responseId: second.finalStep.response.id, usage: usageOf(second.usage) },
  };
}

const steps = {
  generate: () => generate(provider(model)),
  'multi-turn': () => multiTurn(provider(model)),
  stream: () => stream(provider(model)),
  'chat-generate': () => generate(provider.chat(model)),
  'chat-stream': () => stream(provider.chat(model)),
  embed: async () => {
    const result = await embed({ model: provider.embedding(embeddingModel), value: prompt, maxRetries: 0 });
    return { dimensions: result.embedding.length, usage: result.usage ?? null };
  },
  'bad-key': badKey,
};

const chosen = process.argv.length > 2 ? process.argv.slice(2) : Object.keys(steps);
const results = {};
let failed = false;
for (const name of chosen) {
  if (!(name in steps)) {
    results[name] = { failed: { name: 'UnknownStep', message: `no step ${name}` } };
    failed = true;
    continue;
  }
  try {
    results[name] = await steps[name]();
  } catch (error) {
    results[name] = { failed: describe(error) };
    failed = true;
  }
}
process.stdout.write(JSON.stringify(results) + '\n');
process.exitCode = failed ? 1 : 0;
