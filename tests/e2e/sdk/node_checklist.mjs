// The spec's compatibility checklist (section 8, item 35) for the Node SDK, run by `test_sdk_versions.py`
// under each `openai` npm version it installs:
//   node node_checklist.mjs ROOT FAILING_ROOT IMAGE MASK
// prints one JSON object of observations; the test asserts. Node sends `image[]` for an array of images and
// form booleans as "true", which is what this exercises.
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [root, failingRoot, imagePath, maskPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${root}/v1`, apiKey: "sk-local", maxRetries: 0, timeout: 120000 });
const image = fs.readFileSync(imagePath);
const results = {};

// Magic bytes and pixel size of a PNG/JPEG/WebP payload, enough to compare with what was asked.
function describe(b64) {
  const data = Buffer.from(b64, "base64");
  const magic = data.subarray(0, 4).toString("hex");
  if (magic === "89504e47") return [magic, `${data.readUInt32BE(16)}x${data.readUInt32BE(20)}`];
  return [magic, null];
}

async function check(name, call) {
  try {
    results[name] = await call();
  } catch (error) {
    results[name] = {
      class: error.constructor.name,
      status: error.status ?? null,
      code: error.code ?? null,
      param: error.param ?? null,
      message: error.message,
    };
  }
}

async function collect(stream, fields) {
  const events = [];
  for await (const event of stream) events.push(fields(event));
  return events;
}

await check("generate", async () => {
  const response = await client.images.generate({ model: "gpt-image-1", prompt: "a red circle", n: 2, size: "1536x1024" });
  return { images: response.data.map((item) => describe(item.b64_json)), total_tokens: response.usage.total_tokens };
});
await check("jpeg", async () => {
  const response = await client.images.generate({ prompt: "x", output_format: "jpeg", output_compression: 50 });
  return [response.output_format, describe(response.data[0].b64_json)[0]];
});
await check("stream", async () => {
  const stream = await client.images.generate({ prompt: "x", size: "512x512", stream: true, partial_images: 2 });
  return collect(stream, (event) => [event.type, event.partial_image_index ?? null, describe(event.b64_json)]);
});
await check("edit_list", async () => {
  const files = [await toFile(image, "a.png", { type: "image/png" }), await toFile(image, "b.png", { type: "image/png" })];
  const response = await client.images.edit({ model: "gpt-image-1", prompt: "x", image: files });
  return response.data.map((item) => describe(item.b64_json));
});
await check("edit_mask", async () => {
  const response = await client.images.edit({
    prompt: "x",
    image: fs.createReadStream(imagePath),
    mask: fs.createReadStream(maskPath),
    input_fidelity: "high",
    n: 2,
  });
  return response.data.map((item) => describe(item.b64_json));
});
await check("edit_stream", async () => {
  const stream = await client.images.edit({ prompt: "x", image: await toFile(image, "a.png"), stream: true, partial_images: 1 });
  return collect(stream, (event) => [event.type, describe(event.b64_json)]);
});
await check("variation", async () => (await client.images.createVariation({ image: await toFile(image, "a.png"), n: 2 })).data.length);
await check("models", async () => {
  const objects = new Set();
  for await (const model of client.models.list()) objects.add(model.object);
  return [...objects];
});
await check("model_missing", () => client.models.retrieve("no-such-model"));
await check("bad_size", () => client.images.generate({ prompt: "x", size: "bogus" }));
await check("bad_stream", async () => collect(await client.images.generate({ prompt: "", stream: true }), (event) => event.type));
await check("mid_stream_failure", async () => {
  const failing = new OpenAI({ baseURL: `${failingRoot}/v1`, apiKey: "sk-local", maxRetries: 0 });
  const stream = await failing.images.generate({ model: "tiny-flux", prompt: "x", size: "256x256", stream: true, num_inference_steps: 3 });
  return collect(stream, (event) => event.type);
});
console.log(JSON.stringify(results));
