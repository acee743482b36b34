"""The private network: a VPC over three zones, private subnets for nodes, NAT egress, flow logs, and private
endpoints for the AWS APIs the cluster calls."""

from __future__ import annotations

import functools

import pulumi
import pulumi_aws as aws

from byoc.clouds.aws import INTERFACE_ENDPOINTS, ZONES, subnet_cidrs
from byoc.names import resource_name
from stacks.aws.context import AwsContext, policy, trust


def _nth(index: int, names: list[str]) -> str:
    return names[index]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]
    endpoint_security_group_id: pulumi.Output[str]
    # one per zone: the global layer of a multi-region deployment adds the routes to the peer regions' ranges
    private_route_table_ids: list[pulumi.Output[str]]

    def __init__(self, ctx: AwsContext, flow_log_key_arn: pulumi.Input[str]) -> None:
        name = ctx.name
        super().__init__("byoc:aws:Network", f"{name}-network", None, pulumi.ResourceOptions(provider=ctx.provider))
        cluster = ctx.deployment.cluster_name
        cidr = ctx.deployment.network.cidr
        private_cidrs, public_cidrs = subnet_cidrs(cidr)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=cidr,
            enable_dns_hostnames=True,  # interface endpoints with private DNS need both
            enable_dns_support=True,
            tags=ctx.tags(Name=resource_name(name)),
            opts=ctx.opts(self),
        )
        # No rules at all: nothing may use the default security group by accident.
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg",
            vpc_id=vpc.id,
            tags=ctx.tags(Name=resource_name(name, "default-unused")),
            opts=ctx.opts(self),
        )

        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=ctx.tags(), opts=ctx.opts(self))
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=ctx.tags(Name=resource_name(name, "public")),
            opts=ctx.opts(self),
        )

        self.private_subnet_ids, self.public_subnet_ids = [], []
        private_route_tables: list[aws.ec2.RouteTable] = []
        nat_gateways: list[aws.ec2.NatGateway] = []
        for index in range(ZONES):
            zone = ctx.zones.apply(functools.partial(_nth, index))
            public = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[index],
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags=ctx.tags(Name=resource_name(name, "public", str(index)), **{"kubernetes.io/role/elb": "1"}),
                opts=ctx.opts(self),
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}", subnet_id=public.id, route_table_id=public_rt.id, opts=ctx.opts(self)
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[index],
                availability_zone=zone,
                tags=ctx.tags(
                    Name=resource_name(name, "private", str(index)),
                    **{
                        "kubernetes.io/role/internal-elb": "1",
                        "karpenter.sh/discovery": cluster,  # Karpenter launches GPU nodes here
                    },
                ),
                opts=ctx.opts(self),
            )
            if index == 0 or ctx.deployment.network.nat_gateways == "per_zone":
                eip = aws.ec2.Eip(f"{name}-nat-{index}", domain="vpc", tags=ctx.tags(), opts=ctx.opts(self))
                nat_gateways.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{index}",
                        subnet_id=public.id,
                        allocation_id=eip.allocation_id,
                        tags=ctx.tags(Name=resource_name(name, "nat", str(index))),
                        opts=ctx.opts(self, depends_on=[igw]),
                    )
                )
            route_table = aws.ec2.RouteTable(
                f"{name}-private-rt-{index}",
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat_gateways[-1].id)],
                tags=ctx.tags(Name=resource_name(name, "private", str(index))),
                opts=ctx.opts(self),
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}", subnet_id=private.id, route_table_id=route_table.id, opts=ctx.opts(self)
            )
            private_route_tables.append(route_table)
            self.private_subnet_ids.append(private.id)
            self.public_subnet_ids.append(public.id)

        self._flow_logs(ctx, vpc, flow_log_key_arn)

        # S3 through a gateway endpoint: model artifacts never cross the NAT.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{ctx.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_route_tables],
            tags=ctx.tags(Name=resource_name(name, "s3")),
            opts=ctx.opts(self),
        )
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            vpc_id=vpc.id,
            description="HTTPS from inside the VPC to the AWS API interface endpoints",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=443, to_port=443, cidr_blocks=[cidr], description="HTTPS from the VPC"
                )
            ],
            egress=[],  # endpoints only answer
            tags=ctx.tags(Name=resource_name(name, "endpoints")),
            opts=ctx.opts(self),
        )
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{ctx.region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=self.private_subnet_ids,
                security_group_ids=[endpoint_sg.id],
                tags=ctx.tags(Name=resource_name(name, service)),
                opts=ctx.opts(self),
            )

        self.vpc_id = vpc.id
        self.private_route_table_ids = [rt.id for rt in private_route_tables]
        self.endpoint_security_group_id = endpoint_sg.id
        self.register_outputs({"vpc_id": vpc.id, "private_subnet_ids": self.private_subnet_ids})

    def _flow_logs(self, ctx: AwsContext, vpc: aws.ec2.Vpc, key_arn: pulumi.Input[str]) -> None:
        name = ctx.name
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs",
            name=f"/byoc/{name}/vpc-flow-logs",
            retention_in_days=ctx.log_retention_days,
            kms_key_id=key_arn,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        role = aws.iam.Role(
            f"{name}-flow-logs",
            name=resource_name(name, "flow-logs"),
            description="VPC Flow Logs delivery to its CloudWatch log group",
            # Confused-deputy guard: only flow logs of this account may assume it.
            assume_role_policy=trust("vpc-flow-logs.amazonaws.com", StringEquals={"aws:SourceAccount": ctx.account_id}),
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs",
            role=role.id,
            policy=policy(
                [
                    {
                        "Sid": "WriteFlowLogs",
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        "Resource": [log_group.arn, pulumi.Output.concat(log_group.arn, ":*")],
                    }
                ]
            ),
            opts=ctx.opts(self),
        )
        aws.ec2.FlowLog(
            f"{name}-flow-log",
            vpc_id=vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=log_group.arn,
            iam_role_arn=role.arn,
            max_aggregation_interval=60,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
