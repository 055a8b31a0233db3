"""The reference's tutorial "Build an embedding pipeline with datasets", its embedding function as
written there, changing only the URL, the token and the model name (ENDPOINT_URL, HF_TOKEN,
ENDPOINT_NAME). `datasets.map` hands it batches of a column; the test hands it one such batch
(the squad dataset is on the Hub, which these machines cannot reach)."""

import os

from openai import OpenAI

# Configuration
ENDPOINT_URL = f"{os.environ['ENDPOINT_URL']}/v1/"  # Endpoint URL + version
HF_TOKEN = os.getenv("HF_TOKEN")  # Your Hugging Face Hub token from hf.co/settings/tokens

# Initialize OpenAI client for your endpoint
client = OpenAI(
    base_url=ENDPOINT_URL,
    api_key=HF_TOKEN,
)


def get_embeddings(examples):
    """Get embeddings for a batch of texts."""
    response = client.embeddings.create(
        model=os.environ["ENDPOINT_NAME"],  # Replace with your actual endpoint name
        input=examples["context"],  # In the squad dataset, the text is in the "context" column
    )

    # Extract embeddings from response objects
    embeddings = [sample.embedding for sample in response.data]

    return {"embeddings": embeddings}  # datasets expects a dictionary with a key "embeddings" and a value of a list of embeddings
