"""Glue tables over the curated Parquet (columns from tapegate/schema.py, partition projection by
day), an Athena workgroup (engine v3, encrypted results enforced, a bytes-scanned cutoff) and the
named queries from tapegate/queries.py."""

from __future__ import annotations

from aws_cdk import Aws, Stack
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from constructs import Construct

from cdk.settings import Settings
from cdk.storage import Storage
from tapegate.queries import QUERIES
from tapegate.schema import PARTITION, TABLES, glue_columns

# Before this day nothing can exist; partition projection needs a start, and a range that does
# not cover a day silently returns nothing for it.
FIRST_DAY = "2024-01-01"
ENGINE_V3 = "Athena engine version 3"


def table_parameters(bucket: str, table: str) -> dict[str, str]:
    return {
        "classification": "parquet",
        "EXTERNAL": "TRUE",
        "parquet.compression": "ZSTD",
        "projection.enabled": "true",
        f"projection.{PARTITION}.type": "date",
        f"projection.{PARTITION}.format": "yyyy-MM-dd",
        f"projection.{PARTITION}.range": f"{FIRST_DAY},NOW",
        f"projection.{PARTITION}.interval": "1",
        f"projection.{PARTITION}.interval.unit": "DAYS",
        "storage.location.template": f"s3://{bucket}/{table}/{PARTITION}=${{{PARTITION}}}/",
    }


class Analytics(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, storage: Storage) -> None:
        super().__init__(scope, id)
        self.database_name = settings.name.replace("-", "_")
        self.database = glue.CfnDatabase(
            self, "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name,
                description="tapegate: sessions, events and frames of recorded sessions",
            ),
        )  # fmt: skip
        bucket = storage.curated.bucket_name
        self.tables: dict[str, glue.CfnTable] = {}
        for name in TABLES:
            table = glue.CfnTable(
                self, f"{name.title()}Table",
                catalog_id=Aws.ACCOUNT_ID,
                database_name=self.database_name,
                table_input=glue.CfnTable.TableInputProperty(
                    name=name,
                    table_type="EXTERNAL_TABLE",
                    parameters=table_parameters(bucket, name),
                    partition_keys=[glue.CfnTable.ColumnProperty(name=PARTITION, type="string")],
                    storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                        location=f"s3://{bucket}/{name}/",
                        columns=[
                            glue.CfnTable.ColumnProperty(
                                name=c["Name"], type=c["Type"], comment=c["Comment"]
                            )
                            for c in glue_columns(name)
                        ],
                        input_format=(
                            "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
                        ),
                        output_format=(
                            "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
                        ),
                        serde_info=glue.CfnTable.SerdeInfoProperty(
                            serialization_library=(
                                "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                            )
                        ),
                    ),
                ),
            )  # fmt: skip
            table.node.add_dependency(self.database)
            self.tables[name] = table

        self.workgroup_name = settings.name
        self.workgroup = athena.CfnWorkGroup(
            self, "WorkGroup",
            name=self.workgroup_name,
            description="tapegate audit queries",
            state="ENABLED",
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version=ENGINE_V3
                ),
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=settings.athena_bytes_cutoff,
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{storage.query_results.bucket_name}/athena/",
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=storage.key.key_arn
                    ),
                ),
            ),
        )  # fmt: skip
        self.named_queries = []
        for query in QUERIES:
            named = athena.CfnNamedQuery(
                self, f"Query{query.name.title().replace('-', '')}",
                name=query.name,
                description=f"{query.description}. Parameters: {', '.join(query.params)}",
                database=self.database_name,
                query_string=query.sql,
                work_group=self.workgroup_name,
            )  # fmt: skip
            named.node.add_dependency(self.workgroup, self.database)
            self.named_queries.append(named)

    def workgroup_arn(self) -> str:
        return Stack.of(self).format_arn(
            service="athena", resource="workgroup", resource_name=self.workgroup_name
        )

    def catalog_arns(self) -> list[str]:
        stack = Stack.of(self)
        return [
            stack.format_arn(service="glue", resource="catalog"),
            stack.format_arn(service="glue", resource="database", resource_name=self.database_name),
            *(stack.format_arn(service="glue", resource="table",
                               resource_name=f"{self.database_name}/{table}")
              for table in TABLES),
        ]  # fmt: skip
