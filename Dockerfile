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
ENV PYTHONPATH=/opt/gemini-batch:/opt/gemini-batch/plugins
