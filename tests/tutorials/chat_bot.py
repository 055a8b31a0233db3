"""The reference's tutorial "Build and deploy your own chat application", its six chat functions
as written there, changing only the URL, the token and the model name (read from the environment:
ENDPOINT_URL, HF_TOKEN, ENDPOINT_NAME) and leaving out Gradio's window around them."""

import json
import os

import requests
from huggingface_hub import InferenceClient
from openai import OpenAI

ENDPOINT_URL = os.environ["ENDPOINT_URL"]
ENDPOINT_NAME = os.environ["ENDPOINT_NAME"]

# --- Using Hugging Face InferenceClient
client = InferenceClient(
    base_url=f"{ENDPOINT_URL}/v1/",  # Replace with your endpoint URL
    token=os.getenv("HF_TOKEN")  # Use environment variable for security
)


def chat_with_hf_client(message, history):
    # Convert Gradio history to messages format
    messages = [{"role": msg["role"], "content": msg["content"]} for msg in history]

    # Add the current message
    messages.append({"role": "user", "content": message})

    # Create chat completion
    chat_completion = client.chat.completions.create(
        model=ENDPOINT_NAME,  # Use the name of your endpoint (i.e. qwen3-1.7b-instruct-xxxx)
        messages=messages,
        max_tokens=150,
        temperature=0.7,
    )

    # Return the response
    return chat_completion.choices[0].message.content


# --- Using OpenAI Client
openai_client = OpenAI(
    base_url=f"{ENDPOINT_URL}/v1/",  # Replace with your endpoint URL
    api_key=os.getenv("HF_TOKEN")  # Use environment variable for security
)


def chat_with_openai(message, history):
    # Convert Gradio history to OpenAI format
    messages = [{"role": msg["role"], "content": msg["content"]} for msg in history]

    # Add the current message
    messages.append({"role": "user", "content": message})

    # Create chat completion
    chat_completion = openai_client.chat.completions.create(
        model=ENDPOINT_NAME,  # Use the name of your endpoint (i.e. qwen3-1.7b-xxxx)
        messages=messages,
        max_tokens=150,
        temperature=0.7,
    )

    # return the response
    return chat_completion.choices[0].message.content


# --- Using Requests Library
API_URL = f"{ENDPOINT_URL}/v1/chat/completions"  # Use the chat completions endpoint
headers = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "Authorization": f"Bearer {os.getenv('HF_TOKEN')}"  # Use environment variable for security
}


def chat_with_requests(message, history):
    # Convert Gradio history to messages format
    messages = [{"role": msg["role"], "content": msg["content"]} for msg in history]

    # Add the current message
    messages.append({"role": "user", "content": message})

    # Prepare the payload using the Messages API format
    payload = {
        "model": ENDPOINT_NAME,  # Use the name of your endpoint (i.e. qwen3-1.7b-xxxx)
        "messages": messages,
        "max_tokens": 150,
        "temperature": 0.7,
        "stream": False
    }

    # Make the request
    response = requests.post(API_URL, headers=headers, json=payload)
    response.raise_for_status()

    # Parse the response
    result = response.json()
    return result["choices"][0]["message"]["content"]


# --- Streaming: Hugging Face InferenceClient
def chat_with_hf_streaming(message, history):
    # Convert history to messages format
    messages = [{"role": msg["role"], "content": msg["content"]} for msg in history]
    messages.append({"role": "user", "content": message})

    # Create streaming chat completion
    chat_completion = client.chat.completions.create(
        model=ENDPOINT_NAME,
        messages=messages,
        max_tokens=150,
        temperature=0.7,
        stream=True  # Enable streaming
    )

    response = ""
    for chunk in chat_completion:
        if chunk.choices[0].delta.content:
            response += chunk.choices[0].delta.content
            yield response  # Yield partial response for streaming


# --- Streaming: OpenAI Client (the tutorial's indentation of its body repaired)
def chat_with_streaming(message, history):
    # Convert history to OpenAI format
    messages = [{"role": msg["role"], "content": msg["content"]} for msg in history]
    messages.append({"role": "user", "content": message})
    chat_completion = openai_client.chat.completions.create(
        model=ENDPOINT_NAME,  # Use the name of your endpoint (i.e. qwen3-1.7b-xxxx)
        messages=messages,
        max_tokens=150,
        temperature=0.7,
        stream=True,  # Enable streaming
    )
    response = ""
    for chunk in chat_completion:
        if chunk.choices[0].delta.content:
            response += chunk.choices[0].delta.content
            yield response  # Yield partial response for streaming


# --- Streaming: Requests Library
def chat_with_requests_streaming(message, history):
    # Convert Gradio history to messages format
    messages = [{"role": msg["role"], "content": msg["content"]} for msg in history]
    messages.append({"role": "user", "content": message})
    # Prepare payload using Messages API format
    payload = {
        "model": ENDPOINT_NAME,
        "messages": messages,
        "max_tokens": 150,
        "temperature": 0.7,
        "stream": True,  # Enable streaming
    }
    response = requests.post(API_URL, headers=headers, json=payload, stream=True)
    content = ""
    for line in response.iter_lines():
        line = line.decode("utf-8")
        if line.startswith("data: ") and not line.endswith("[DONE]"):
            data = json.loads(line[len("data: ") :])
            chunk = data["choices"][0]["delta"].get("content", "")
            content += chunk
            yield content
