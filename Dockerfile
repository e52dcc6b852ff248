# One image for every service of docker-compose.yaml: the project's locked
# dependencies plus its code (the emulators today; the Airflow stack later).
FROM python:3.11-slim
WORKDIR /opt/gemini-batch
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt
COPY gemini_emulator/ gemini_emulator/
COPY dags/ dags/
COPY plugins/ plugins/
COPY include/ include/
COPY pyproject.toml README.md ./
# The gemini-batch distribution, editable: the provider's entry point registered, the code from the mounts.
RUN pip install --no-cache-dir --no-deps -e .
