// The official `openai` Node SDK against an Omixa gateway, as an application uses it.
//
//   OMIXA_BASE_URL=http://127.0.0.1:8080/api/v1 OMIXA_API_KEY=omx_live_... node openai_sdk.mjs [STEP...]
//
// Steps (all when none is named):
//   chat, chat-stream, chat-stream-helper   chat completions: JSON, SSE, the SDK's stream helper
//   responses, responses-stream             the Responses API: JSON, typed SSE events
//   responses-follow-up                     previous_response_id, retrieve, input_items, delete
//   embeddings                              the SDK's default (base64, decoded by the SDK)
//   images                                  images.generate (b64_json)
//   models                                  models.list, every page
//   bad-key, no-model, no-balance           errors: the SDK's error class and its fields
//                                           (no-balance uses OMIXA_BROKE_API_KEY, a key of an
//                                           empty wallet)
// Prints one JSON object, {step: result}, on stdout; exits 1 when a step failed.
import OpenAI from 'openai';

const baseURL = process.env.OMIXA_BASE_URL;
const apiKey = process.env.OMIXA_API_KEY;
const model = process.env.OMIXA_MODEL ?? 'gpt-4o-mini';
const embeddingModel = process.env.OMIXA_EMBEDDING_MODEL ?? 'text-embedding-3-small';
const imageModel = process.env.OMIXA_IMAGE_MODEL ?? 'gpt-image-1';
const prompt = process.env.OMIXA_PROMPT ?? 'Say something about foxes.';
if (!baseURL || !apiKey) {
  console.error('usage: OMIXA_BASE_URL=... OMIXA_API_KEY=... node openai_sdk.mjs [STEP...]');
  process.exit(2);
}
// No retries: a test must see the first answer, not the third.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });
const messages = [{ role: 'user', content: prompt }];

function usageOf(usage) {
  return usage ? JSON.parse(JSON.stringify(usage)) : null;
}

async function chat() {
  const completion = await client.chat.completions.create({ model, messages });
  return {
    id: completion.id,
    model: completion.model,
    text: completion.choices[0].message.content,
    finishReason: completion.choices[0].finish_reason,
    usage: usageOf(completion.usage),
  };
}

async function chatStream() {
  const stream = await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  const pieces = [];
  let finishReason = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices) {
      if (choice.delta?.content) pieces.push(choice.delta.content);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (chunk.usage) usage = usageOf(chunk.usage);
  }
  return { text: pieces.join(''), chunks, finishReason, usage };
}

async function chatStreamHelper() {
  const stream = client.chat.completions.stream({ model, messages });
  const pieces = [];
  stream.on('content', (delta) => pieces.push(delta));
  const completion = await stream.finalChatCompletion();
  return {
    text: pieces.join(''),
    final: completion.choices[0].message.content,
    finishReason: completion.choices[0].finish_reason,
  };
}

async function responses() {
  const response = await client.responses.create({ model, instructions: 'Answer briefly.', input: prompt });
  return {
    id: response.id,
    status: response.status,
    text: response.output_text,
    usage: usageOf(response.usage),
  };
}

async function responsesStream() {
  const stream = client.responses.stream({ model, instructions: 'Answer briefly.', input: prompt });
  const events = [];
  const pieces = [];
  for await (const event of stream) {
    events.push(event.type);
    if (event.type === 'response.output_text.delta') pieces.push(event.delta);
  }
  const response = await stream.finalResponse();
  return {
    id: response.id,
    status: response.status,
    text: pieces.join(''),
    final: response.output_text,
    events,
    usage: usageOf(response.usage),
  };
}

async function responsesFollowUp() {
  const first = await client.responses.create({ model, input: prompt });
  const second = await client.responses.create({ model, input: 'And then?', previous_response_id: first.id });
  const fetched = await client.responses.retrieve(second.id);
  const items = [];
  for await (const item of client.responses.inputItems.list(second.id)) items.push(item.type);
  await client.responses.delete(second.id);
  let afterDelete = null;
  try {
    await client.responses.retrieve(second.id);
  } catch (error) {
    afterDelete = describe(error);
  }
  return {
    first: first.id,
    second: second.id,
    previous: second.previous_response_id ?? null,
    fetched: { id: fetched.id, text: fetched.output_text },
    inputItems: items,
    afterDelete,
    usage: usageOf(second.usage),
  };
}

async function embeddings() {
  const answer = await client.embeddings.create({ model: embeddingModel, input: [prompt, 'A second input.'], dimensions: 8 });
  return {
    vectors: answer.data.map((d) => d.embedding),
    indexes: answer.data.map((d) => d.index),
    usage: usageOf(answer.usage),
  };
}

async function images() {
  const answer = await client.images.generate({ model: imageModel, prompt: 'A fox in the snow.', size: '1024x1024', quality: 'low' });
  const png = Buffer.from(answer.data[0].b64_json, 'base64');
  return {
    count: answer.data.length,
    pngSignature: png.subarray(1, 4).toString('latin1'),
    usage: usageOf(answer.usage),
  };
}

async function models() {
  const ids = [];
  for await (const listed of client.models.list()) ids.push({ id: listed.id, object: listed.object, owned_by: listed.owned_by, created: listed.created });
  return { models: ids };
}

async function expectError(call) {
  try {
    await call();
  } catch (error) {
    if (!(error instanceof OpenAI.APIError)) throw error;
    return describe(error);
  }
  throw new Error('the call succeeded');
}

function describe(error) {
  if (error instanceof OpenAI.APIError) {
    return {
      class: error.constructor.name,
      status: error.status ?? null,
      code: error.code ?? null,
      type: error.type ?? null,
      param: error.param ?? null,
      message: error.message,
      requestID: error.requestID ?? null,
      bodyRequestId: error.error?.request_id ?? null,
    };
  }
  return { class: error?.constructor?.name ?? typeof error, message: String(error?.message ?? error) };
}

const steps = {
  chat,
  'chat-stream': chatStream,
  'chat-stream-helper': chatStreamHelper,
  responses,
  'responses-stream': responsesStream,
  'responses-follow-up': responsesFollowUp,
  embeddings,
  images,
  models,
  'bad-key': () =>
    expectError(() => new OpenAI({ baseURL, apiKey: 'omx_live_not_a_key', maxRetries: 0 }).chat.completions.create({ model, messages })),
  'no-model': () => expectError(() => client.chat.completions.create({ model: 'no-such-model', messages })),
  'no-balance': () =>
    expectError(() =>
      new OpenAI({ baseURL, apiKey: process.env.OMIXA_BROKE_API_KEY, maxRetries: 0 }).responses.create({ model, input: prompt }),
    ),
};

const chosen = process.argv.length > 2 ? process.argv.slice(2) : Object.keys(steps).filter((s) => s !== 'no-balance');
const results = {};
let failed = false;
for (const name of chosen) {
  if (!(name in steps)) {
    results[name] = { failed: { class: 'UnknownStep', message: `no step ${name}` } };
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
